//! Operator roles and what each may do.
//!
//! The mapping is a single `match`, so adding a permission forces a decision for every role.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The role an operator API token carries.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens.
    Admin,
    /// Publishes artifacts.
    Publisher,
    /// Manages groups, enrollment and rollouts (create, resume, abort).
    Operator,
    /// Approves rollout gates.
    Approver,
    /// Reads everything, changes nothing.
    Viewer,
}

/// Something an API call wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read artifacts, groups, devices, rollouts and the audit log.
    Read,
    /// Upload and sign-in a new artifact version.
    Publish,
    /// Create groups and enrollment tokens; revoke enrollment tokens and devices; remove devices.
    ManageFleet,
    /// Create, resume and abort rollouts.
    OperateRollouts,
    /// Approve a rollout's manual gate.
    ApproveGates,
    /// Create and revoke API tokens.
    ManageTokens,
    /// Install a new root version: renew the trust anchor or rotate the keys it names.
    ManageTrust,
}

impl Permission {
    /// What it allows, in an operator's words: "token ci has role viewer, which may not
    /// {this}".
    pub fn in_words(self) -> &'static str {
        match self {
            Permission::Read => "read the fleet, rollouts and audit log",
            Permission::Publish => "publish artifacts",
            Permission::ManageFleet => "manage groups, enrollment tokens and devices",
            Permission::OperateRollouts => "create, resume or abort rollouts",
            Permission::ApproveGates => "approve rollout gates",
            Permission::ManageTokens => "create or revoke API tokens",
            Permission::ManageTrust => "install a new root (renew the trust anchor or rotate keys)",
        }
    }
}

impl Role {
    /// Every role, for tests and help texts.
    pub const ALL: [Role; 5] = [Role::Admin, Role::Publisher, Role::Operator, Role::Approver, Role::Viewer];

    /// Whether this role grants `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        match permission {
            Permission::Read => true,
            Permission::Publish => matches!(self, Role::Admin | Role::Publisher),
            Permission::ManageFleet | Permission::OperateRollouts => {
                matches!(self, Role::Admin | Role::Operator)
            }
            Permission::ApproveGates => matches!(self, Role::Admin | Role::Approver),
            Permission::ManageTokens | Permission::ManageTrust => matches!(self, Role::Admin),
        }
    }

    /// The lowercase name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Publisher => "publisher",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Viewer => "viewer",
        }
    }
}

/// A role name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; expected one of admin, publisher, operator, approver, viewer")]
pub struct RoleError(pub String);

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, RoleError> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| RoleError(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_matrix() {
        use Permission::*;
        // (role, permissions it must have); everything else must be denied.
        let table: &[(Role, &[Permission])] = &[
            (Role::Admin, &[Read, Publish, ManageFleet, OperateRollouts, ApproveGates, ManageTokens, ManageTrust]),
            (Role::Publisher, &[Read, Publish]),
            (Role::Operator, &[Read, ManageFleet, OperateRollouts]),
            (Role::Approver, &[Read, ApproveGates]),
            (Role::Viewer, &[Read]),
        ];
        let all = [Read, Publish, ManageFleet, OperateRollouts, ApproveGates, ManageTokens, ManageTrust];
        for (role, granted) in table {
            for p in all {
                assert_eq!(role.allows(p), granted.contains(&p), "{role} {p:?}");
            }
        }
    }

    #[test]
    fn role_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
