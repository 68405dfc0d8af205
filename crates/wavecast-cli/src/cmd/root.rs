//! `wavecast root rotate`: sign the next root.json version on this machine and install it.
//!
//! The new root is signed by the current root key and, when it changes, by the new one too
//! (TUF's chain): devices that pin any earlier root follow it. Every other key changes through
//! a new root as well. A new targets key comes with the current targets signed again by it,
//! since devices refuse targets the newest root's key did not sign. New online keys (snapshot,
//! timestamp, director, audit checkpoint) are generated here, and the server must hold them
//! before the new root arrives, because it re-signs snapshot and timestamp with them at once:
//! the first run generates them and stops; the operator copies them into `keys/` on every
//! replica and runs the same command again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use wavecast_api::{KeyRole, RootRotated, RotateRoot};
use wavecast_tuf::keys::{SigningKey, rotated_key_file_name};
use wavecast_tuf::publish::resign_targets;
use wavecast_tuf::root::{KeyChanges, next_root};

use crate::cmd::artifact::{server_root, server_targets};
use crate::{JsonRemote, output};

/// The online keys `--online-roles` may name.
const ONLINE_ROLES: [KeyRole; 4] = [KeyRole::Snapshot, KeyRole::Timestamp, KeyRole::Director, KeyRole::Checkpoint];

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Sign the next root.json (renewed, or naming new keys) and install it on the server.
    #[command(after_help = "With no --new-* option the new version only renews the expiry. A key \
file given to --new-root-key or --new-targets-key that does not exist is generated (0600). \
--new-online-keys DIR: new server keys are generated into DIR the first time, and the command \
stops so they can be copied into the key directory (DATA_DIR/keys/) of every server replica; run \
it again to sign and install. Writes N.root.json to --out once installed: devices pinning an \
older root follow the chain; new device images may pin it.")]
    #[command(mut_arg("json", |a| a.help("Print what was installed as JSON")))]
    Rotate {
        /// The current root key (DIR/offline/root.key from `wavecast init`).
        #[arg(long, value_name = "ROOT_KEY")]
        root_key: PathBuf,
        /// Replace the root key with this one (generated if the file does not exist).
        #[arg(long, value_name = "PATH")]
        new_root_key: Option<PathBuf>,
        /// Replace the publisher (targets) key with this one (generated if the file does not
        /// exist); the current targets are signed again with it.
        #[arg(long, value_name = "PATH")]
        new_targets_key: Option<PathBuf>,
        /// Replace the server's online keys with keys in this directory (generated into it the
        /// first time).
        #[arg(long, value_name = "DIR")]
        new_online_keys: Option<PathBuf>,
        /// Which online keys --new-online-keys replaces.
        #[arg(
            long,
            value_name = "ROLES",
            value_delimiter = ',',
            default_value = "snapshot,timestamp,director,checkpoint",
            requires = "new_online_keys",
            value_parser = online_role
        )]
        online_roles: Vec<KeyRole>,
        /// How long the new root stays valid.
        #[arg(long, default_value = "365d", value_parser = wavecast_core::duration::parse_duration)]
        expires: std::time::Duration,
        /// How long the targets signed again with --new-targets-key stay valid.
        #[arg(long, default_value = "365d", value_parser = wavecast_core::duration::parse_duration)]
        targets_expires: std::time::Duration,
        /// Where to write N.root.json.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        args: JsonRemote,
    },
}

fn online_role(s: &str) -> Result<KeyRole, String> {
    ONLINE_ROLES.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
        format!("{s:?} is not an online key; expected some of snapshot, timestamp, director, checkpoint")
    })
}

pub async fn run(cmd: RootCommand) -> anyhow::Result<ExitCode> {
    let RootCommand::Rotate {
        root_key,
        new_root_key,
        new_targets_key,
        new_online_keys,
        online_roles,
        expires,
        targets_expires,
        out,
        args: JsonRemote { json, remote },
    } = cmd;
    let lifetime = |d: std::time::Duration, flag: &str| {
        jiff::SignedDuration::try_from(d).with_context(|| format!("{flag} is too long"))
    };
    let (expires, targets_expires) = (lifetime(expires, "--expires")?, lifetime(targets_expires, "--targets-expires")?);
    let root_key = SigningKey::load(&root_key)?;
    let new_root = new_root_key.as_deref().map(load_or_generate).transpose()?;
    let new_targets = new_targets_key.as_deref().map(load_or_generate).transpose()?;
    let mut online: Vec<(KeyRole, SigningKey)> = Vec::new();
    if let Some(dir) = &new_online_keys {
        let mut generated = Vec::new();
        for role in dedup(online_roles) {
            let (key, path, fresh) = online_key(dir, role)?;
            if fresh {
                generated.push(path);
            }
            online.push((role, key));
        }
        if !generated.is_empty() {
            println!("Generated new online keys in {}:", dir.display());
            for path in &generated {
                println!("  {}", path.display());
            }
            println!(
                "\nCopy them into the key directory (DATA_DIR/keys/) of every server replica, next to the keys in use\n\
                 (the server keeps signing with those until the new root arrives), then run this command again\n\
                 to sign and install the new root."
            );
            return Ok(ExitCode::SUCCESS);
        }
    }

    let client = remote.client()?;
    let current = server_root(&client).await?;
    let key_of = |role: KeyRole| online.iter().find(|(r, _)| *r == role).map(|(_, k)| k);
    let changes = KeyChanges {
        root: new_root.as_ref().map(|(k, _)| k),
        targets: new_targets.as_ref().map(|(k, _)| k),
        snapshot: key_of(KeyRole::Snapshot),
        timestamp: key_of(KeyRole::Timestamp),
        director: key_of(KeyRole::Director),
        checkpoint: key_of(KeyRole::Checkpoint),
    };
    let now = wavecast_os::clock::now();
    let next = next_root(&current, &root_key, &changes, now + expires).await?;
    let version = next.signed().signed.version.get();
    let targets = match &new_targets {
        Some((key, _)) => {
            // Signed on top of targets the current root vouches for, never on what the
            // server merely says is current.
            let current_targets = server_targets(&client, &current.signed).await?;
            let signed = resign_targets(&next.signed().signed, &current_targets, key, now + targets_expires).await?;
            Some(String::from_utf8(signed.buffer().clone())?)
        }
        None => None,
    };
    let root_text = String::from_utf8(next.buffer().clone())?;
    let installed: RootRotated = client
        .post("/api/v1/root/rotate", &RotateRoot { root: root_text.clone(), targets })
        .await
        .with_context(|| format!("installing root.json version {version}"))?;
    let file = out.join(format!("{version}.root.json"));
    wavecast_os::fs::write_atomic(&file, root_text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", file.display()))?;
    if json {
        output::json(&installed)?;
        return Ok(ExitCode::SUCCESS);
    }
    let changed: Vec<&str> = installed.changed.iter().map(|k| k.as_str()).collect();
    println!(
        "installed root.json version {} (valid until {}); {}",
        installed.version,
        output::time(installed.expires_at),
        if changed.is_empty() { "no key changed".to_owned() } else { format!("new keys: {}", changed.join(", ")) }
    );
    println!(
        "wrote {}: devices follow the chain to it from the root they pin; ship it in new device images",
        file.display()
    );
    if let Some(v) = installed.targets_version {
        println!(
            "the targets were signed again with the new publisher key (version {v}); publish with that key from now on"
        );
    }
    if let Some((_, path)) = &new_root {
        println!("keep {} offline: it signs the next root; the old root key signs nothing any more", path.display());
    }
    if !online.is_empty() {
        println!("the server signs with the new online keys now; remove the retired ones from keys/ on every replica");
    }
    Ok(ExitCode::SUCCESS)
}

fn dedup(mut roles: Vec<KeyRole>) -> Vec<KeyRole> {
    roles.sort();
    roles.dedup();
    roles
}

/// Loads the key at `path`, or generates one there (0600) when the file does not exist.
fn load_or_generate(path: &Path) -> anyhow::Result<(SigningKey, PathBuf)> {
    if path.exists() {
        return Ok((SigningKey::load(path)?, path.to_path_buf()));
    }
    let key = SigningKey::generate()?;
    key.save(path)?;
    eprintln!("generated a new key in {}", path.display());
    Ok((key, path.to_path_buf()))
}

/// The new key for the online `role` in `dir` (a file named `ROLE-….key`), generated when
/// there is none; says whether it was.
fn online_key(dir: &Path, role: KeyRole) -> anyhow::Result<(SigningKey, PathBuf, bool)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let prefix = format!("{role}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".key") {
            found.push(path);
        }
    }
    match found.as_slice() {
        [] => {
            let key = SigningKey::generate()?;
            let path = dir.join(rotated_key_file_name(role, &key));
            key.save(&path)?;
            Ok((key, path, true))
        }
        [path] => Ok((SigningKey::load(path)?, path.clone(), false)),
        many => anyhow::bail!(
            "{} holds {} {role} keys ({}); keep the one to rotate to",
            dir.display(),
            many.len(),
            many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}
