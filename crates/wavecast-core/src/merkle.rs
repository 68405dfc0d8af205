//! RFC 6962 Merkle trees over the audit log: tree hashes, inclusion and consistency proofs.
//!
//! Leaves are hashed as SHA-256(0x00 ‖ bytes) ([`crate::audit::leaf_hash`]), interior nodes as
//! SHA-256(0x01 ‖ left ‖ right), and a tree of n leaves splits at the largest power of two
//! smaller than n (RFC 6962 §2.1). Proofs are generated with RFC 6962's recursive definitions
//! (§2.1.1 PATH, §2.1.2 SUBPROOF) and checked with RFC 9162's index arithmetic (§2.1.3.2,
//! §2.1.4.2), which never rebuilds a tree, so a verifier needs only the proof and two hashes.

use crate::digest::Sha256Hasher;

use crate::Sha256Digest;

/// Why a tree operation or a proof check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A leaf index at or past the tree size.
    #[error("leaf {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A tree size larger than the leaves held.
    #[error("a tree of size {size} was asked of a log holding {held} leaves")]
    SizeOutOfRange {
        /// The size asked for.
        size: u64,
        /// The leaves held.
        held: u64,
    },
    /// A consistency proof asked from a larger tree to a smaller one.
    #[error("no consistency proof from size {old} to the smaller size {new}")]
    SizesReversed {
        /// The older size.
        old: u64,
        /// The newer size.
        new: u64,
    },
    /// An inclusion proof that does not lead to the expected root.
    #[error("the inclusion proof of leaf {index} does not lead to the root of the tree of size {size}")]
    VerifyInclusion {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof that does not connect the two roots.
    #[error("the consistency proof from size {old} to size {new} does not connect their roots")]
    VerifyConsistency {
        /// The older size.
        old: u64,
        /// The newer size.
        new: u64,
    },
    /// A tree that starts at a compact range, or forgot its oldest hashes, lacks a hash this
    /// needs: one of a subtree of leaves before where it starts.
    #[error("the tree holds hashes from leaf {kept_from} on; this needs one of the subtree starting at leaf {needed}")]
    Forgotten {
        /// The first leaf of the subtree whose hash is missing.
        needed: u64,
        /// Where the tree's hashes start.
        kept_from: u64,
    },
    /// A compact range whose hash count does not fit its size.
    #[error("a compact range of size {size} has {expected} subtree hashes, not {found}")]
    CompactRange {
        /// The range size.
        size: u64,
        /// Hashes required (the number of one bits in `size`).
        expected: usize,
        /// Hashes given.
        found: usize,
    },
}

/// An interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Sha256Digest, right: &Sha256Digest) -> Sha256Digest {
    let mut h = Sha256Hasher::new();
    h.update([1u8]);
    h.update(left.as_bytes());
    h.update(right.as_bytes());
    h.finish()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Sha256Digest {
    Sha256Digest::of(b"")
}

/// The largest power of two smaller than `n` (n ≥ 2): where RFC 6962 splits a tree of n leaves.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// A tree in memory, for the server to compute roots and proofs at any size.
///
/// `levels[l]` holds the hashes of the complete subtrees over leaves `[i·2ˡ, (i+1)·2ˡ)` from
/// some `i` on; every subtree hash a proof needs is one of these or a right edge built from
/// O(log n) of them, so a proof costs O(log² n) hashes instead of rehashing the log. Memory is
/// about 64 bytes a leaf held.
///
/// A tree need not hold the leaves before some size `s` ([`Tree::from_range`], from a
/// checkpoint's frontier; [`Tree::forget_before`]): it then holds, of the subtrees before `s`,
/// only the frontier's (the compact range of `s`). That is all RFC 6962's proofs about later
/// leaves use of the earlier ones: the inclusion proof of a leaf at or after `s`, and the
/// consistency proof from a size at or after `s`, to any size the tree reaches. Other proofs
/// fail with [`MerkleError::Forgotten`].
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Leaves covered, held or not.
    size: u64,
    /// Where the held hashes start: no subtree before it but the frontier's is held.
    start: u64,
    levels: Vec<Level>,
}

/// The held hashes of one level: node `first`, then the nodes after it.
#[derive(Debug, Clone, Default)]
struct Level {
    first: u64,
    hashes: Vec<Sha256Digest>,
}

impl Level {
    fn get(&self, index: u64) -> Option<&Sha256Digest> {
        index.checked_sub(self.first).and_then(|i| self.hashes.get(usize::try_from(i).ok()?))
    }
}

/// The first node of level `l` a tree starting at `start` holds: the frontier's node on that
/// level when `start` has one there, else the first node that ends after `start`.
fn first_held(start: u64, l: usize) -> u64 {
    let above = start >> l;
    above - (above & 1)
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree over the `range.size()` leaves `range` is the frontier of, holding only the
    /// frontier's hashes of them: leaves pushed next extend it, and proofs about them work as
    /// in a tree built from the first leaf.
    pub fn from_range(range: &CompactRange) -> Self {
        let size = range.size();
        let mut hashes = range.hashes().iter();
        let mut levels: Vec<Level> = (0..u64::BITS as usize - size.leading_zeros() as usize)
            .map(|l| Level { first: first_held(size, l), hashes: Vec::new() })
            .collect();
        // The range is largest first: the highest one bit's subtree, then down.
        for l in (0..levels.len()).rev() {
            if size >> l & 1 == 1
                && let Some(h) = hashes.next()
            {
                levels[l].hashes.push(*h);
            }
        }
        Self { size, start: size, levels }
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Sha256Digest) {
        let mut level = 0;
        let mut index = self.size;
        let mut hash = leaf;
        loop {
            if self.levels.len() == level {
                self.levels.push(Level { first: index, hashes: Vec::new() });
            }
            let row = &mut self.levels[level];
            debug_assert_eq!(row.first + row.hashes.len() as u64, index, "level {level}");
            row.hashes.push(hash);
            if index & 1 == 0 {
                break;
            }
            // The left sibling of a right child is always held: it is either pushed after the
            // start or one of the frontier's subtrees.
            let Some(left) = row.get(index - 1) else { break };
            hash = node_hash(left, &hash);
            index /= 2;
            level += 1;
        }
        self.size += 1;
    }

    /// Leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the held hashes start (0 for a tree that holds every leaf).
    pub fn kept_from(&self) -> u64 {
        self.start
    }

    /// Forgets the hashes of the leaves before `start` (at most the size), but the frontier's
    /// of `start`: what memory a tree takes is bounded by the leaves after it. Proofs about
    /// leaves and sizes from `start` on are unchanged.
    pub fn forget_before(&mut self, start: u64) {
        let start = start.min(self.size);
        if start <= self.start {
            return;
        }
        for (l, row) in self.levels.iter_mut().enumerate() {
            let drop = first_held(start, l).saturating_sub(row.first).min(row.hashes.len() as u64);
            row.hashes.drain(..drop as usize);
            row.first += drop;
        }
        self.start = start;
    }

    fn check_size(&self, size: u64) -> Result<(), MerkleError> {
        if size > self.size() { Err(MerkleError::SizeOutOfRange { size, held: self.size() }) } else { Ok(()) }
    }

    /// The root of the first `size` leaves (MTH(D[0:size])).
    pub fn root(&self, size: u64) -> Result<Sha256Digest, MerkleError> {
        self.check_size(size)?;
        if size == 0 { Ok(empty_root()) } else { self.subtree(0, size) }
    }

    /// MTH(D[lo:hi]) for the ranges the RFC's recursion produces: `lo` is always a multiple of
    /// the largest power of two not above `hi - lo`, so a power-of-two range is stored whole.
    fn subtree(&self, lo: u64, hi: u64) -> Result<Sha256Digest, MerkleError> {
        let n = hi - lo;
        if n.is_power_of_two() && lo & (n - 1) == 0 {
            let level = n.trailing_zeros() as usize;
            return self
                .levels
                .get(level)
                .and_then(|row| row.get(lo >> level))
                .copied()
                .ok_or(MerkleError::Forgotten { needed: lo, kept_from: self.start });
        }
        let k = split(n);
        Ok(node_hash(&self.subtree(lo, lo + k)?, &self.subtree(lo + k, hi)?))
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 6962 §2.1.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Sha256Digest>, MerkleError> {
        self.check_size(size)?;
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof)?;
        Ok(proof)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Sha256Digest>) -> Result<(), MerkleError> {
        if hi - lo == 1 {
            return Ok(());
        }
        let k = split(hi - lo);
        if m < lo + k {
            self.path(m, lo, lo + k, out)?;
            out.push(self.subtree(lo + k, hi)?);
        } else {
            self.path(m, lo + k, hi, out)?;
            out.push(self.subtree(lo, lo + k)?);
        }
        Ok(())
    }

    /// The proof that the tree of size `old` is a prefix of the tree of size `new`
    /// (RFC 6962 §2.1.2). Empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Sha256Digest>, MerkleError> {
        self.check_size(new)?;
        if old > new {
            return Err(MerkleError::SizesReversed { old, new });
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof)?;
        }
        Ok(proof)
    }

    fn subproof(
        &self,
        m: u64,
        lo: u64,
        hi: u64,
        whole_old_tree: bool,
        out: &mut Vec<Sha256Digest>,
    ) -> Result<(), MerkleError> {
        let n = hi - lo;
        if m == n {
            // The verifier already knows the old root, so it is left out of the proof.
            if !whole_old_tree {
                out.push(self.subtree(lo, hi)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, whole_old_tree, out)?;
            out.push(self.subtree(lo + k, hi)?);
        } else {
            self.subproof(m - k, lo + k, hi, false, out)?;
            out.push(self.subtree(lo, lo + k)?);
        }
        Ok(())
    }
}

/// The root a leaf and its audit path lead to (RFC 9162 §2.1.3.2).
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Sha256Digest,
    proof: &[Sha256Digest],
) -> Result<Sha256Digest, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mismatch = MerkleError::VerifyInclusion { index, size };
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(mismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(mismatch);
    }
    Ok(r)
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves with root `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Sha256Digest,
    proof: &[Sha256Digest],
    root: &Sha256Digest,
) -> Result<(), MerkleError> {
    if root_from_inclusion_proof(index, size, leaf, proof)? == *root {
        Ok(())
    } else {
        Err(MerkleError::VerifyInclusion { index, size })
    }
}

/// Checks that the tree of size `old` with root `old_root` is a prefix of the tree of size
/// `new` with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Sha256Digest,
    new_root: &Sha256Digest,
    proof: &[Sha256Digest],
) -> Result<(), MerkleError> {
    let mismatch = MerkleError::VerifyConsistency { old, new };
    if old > new {
        return Err(MerkleError::SizesReversed { old, new });
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root { Ok(()) } else { Err(mismatch) };
    }
    if old == 0 {
        // Every tree extends the empty one; a proof here is padding someone added.
        return if proof.is_empty() { Ok(()) } else { Err(mismatch) };
    }
    if proof.is_empty() {
        return Err(mismatch);
    }
    // When the old tree is a complete subtree its root is the proof's unstated first node.
    let mut path = proof.iter();
    let seed = if old.is_power_of_two() { *old_root } else { *path.next().ok_or(mismatch.clone())? };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in path {
        if sn == 0 {
            return Err(mismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if fr == *old_root && sr == *new_root && sn == 0 { Ok(()) } else { Err(mismatch) }
}

/// The right edge of a tree: the roots of the complete subtrees covering `[0, size)`, largest
/// first. It is all a log needs to extend its root with new leaves without reading old ones,
/// and it is checkable: it folds to the tree's root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactRange {
    size: u64,
    hashes: Vec<Sha256Digest>,
}

impl CompactRange {
    /// The empty range.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a range from stored parts, checking the hash count fits the size.
    pub fn from_parts(size: u64, hashes: Vec<Sha256Digest>) -> Result<Self, MerkleError> {
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(MerkleError::CompactRange { size, expected, found: hashes.len() });
        }
        Ok(Self { size, hashes })
    }

    /// Leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest first.
    pub fn hashes(&self) -> &[Sha256Digest] {
        &self.hashes
    }

    /// Appends a leaf hash, merging equal-sized subtrees like a binary counter carries.
    pub fn push(&mut self, leaf: Sha256Digest) {
        let mut hash = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            // from_parts guarantees one hash per one bit, so a carry always has a left sibling.
            let Some(left) = self.hashes.pop() else { break };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// The tree root: subtrees folded from the right, as RFC 6962's split does.
    pub fn root(&self) -> Sha256Digest {
        let mut it = self.hashes.iter().rev();
        let Some(last) = it.next() else { return empty_root() };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    //! The vectors are the RFC 6962 test data used across the certificate-transparency
    //! ecosystem, taken from transparency-dev/merkle: `testonly/constants.go` (leaf inputs,
    //! roots for sizes 0..8, compact ranges) and `proof/verify_test.go` (inclusion and
    //! consistency proofs; there the leaf numbers are 1-based).

    use super::*;
    use crate::audit::leaf_hash;

    const LEAVES: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// (leaf index, tree size, audit path).
    const INCLUSION: [(u64, u64, &[&str]); 4] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    /// (old size, new size, proof).
    const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn d(hex: &str) -> Sha256Digest {
        hex.parse().unwrap()
    }

    fn ds(hexes: &[&str]) -> Vec<Sha256Digest> {
        hexes.iter().map(|h| d(h)).collect()
    }

    fn tree() -> Tree {
        let mut t = Tree::new();
        for l in LEAVES {
            t.push(leaf_hash(&hex::decode(l).unwrap()));
        }
        t
    }

    #[test]
    fn roots_match_the_rfc6962_vectors() {
        let t = tree();
        let mut range = CompactRange::new();
        assert_eq!(range.root(), d(ROOTS[0]));
        for (size, root) in ROOTS.iter().enumerate() {
            assert_eq!(t.root(size as u64).unwrap(), d(root), "size {size}");
            if size > 0 {
                range.push(leaf_hash(&hex::decode(LEAVES[size - 1]).unwrap()));
                assert_eq!(range.root(), d(root), "compact range, size {size}");
                assert_eq!(range.hashes().len(), size.count_ones() as usize);
            }
        }
        assert!(t.root(9).is_err());
        // The compact range of 7 leaves from constants.go: levels 2, 1 and 0.
        let mut seven = CompactRange::new();
        for l in &LEAVES[..7] {
            seven.push(leaf_hash(&hex::decode(l).unwrap()));
        }
        assert_eq!(
            seven.hashes(),
            ds(&[
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            ])
        );
        let rebuilt = CompactRange::from_parts(7, seven.hashes().to_vec()).unwrap();
        assert_eq!(rebuilt.root(), d(ROOTS[7]));
        assert!(CompactRange::from_parts(6, seven.hashes().to_vec()).is_err());
    }

    #[test]
    fn inclusion_proofs_match_the_vectors_and_verify() {
        let t = tree();
        for (index, size, path) in INCLUSION {
            let want = ds(path);
            assert_eq!(t.inclusion_proof(index, size).unwrap(), want, "leaf {index} of {size}");
            let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
            let root = d(ROOTS[size as usize]);
            verify_inclusion(index, size, &leaf, &want, &root).unwrap();
            // Each corruption the transparency-dev suite tries must be refused.
            assert!(verify_inclusion(index + 1, size, &leaf, &want, &root).is_err());
            assert!(verify_inclusion(index, size * 2, &leaf, &want, &root).is_err());
            assert!(verify_inclusion(index, size, &leaf_hash(b"WrongLeaf"), &want, &root).is_err());
            assert!(verify_inclusion(index, size, &leaf, &want, &empty_root()).is_err());
            let mut longer = want.clone();
            longer.push(root);
            assert!(verify_inclusion(index, size, &leaf, &longer, &root).is_err());
            assert!(verify_inclusion(index, size, &leaf, &want[..want.len() - 1], &root).is_err());
            for i in 0..want.len() {
                let mut flipped = want.clone();
                let mut bytes = *flipped[i].as_bytes();
                bytes[0] ^= 8;
                flipped[i] = Sha256Digest::from_bytes(bytes);
                assert!(verify_inclusion(index, size, &leaf, &flipped, &root).is_err(), "flipped {i}");
            }
        }
        assert_eq!(t.inclusion_proof(0, 1).unwrap(), vec![]);
        assert!(t.inclusion_proof(8, 8).is_err());
        assert!(verify_inclusion(0, 0, &empty_root(), &[], &empty_root()).is_err());
    }

    #[test]
    fn consistency_proofs_match_the_vectors_and_verify() {
        let t = tree();
        for (old, new, path) in CONSISTENCY {
            let want = ds(path);
            assert_eq!(t.consistency_proof(old, new).unwrap(), want, "{old} → {new}");
            let (r1, r2) = (d(ROOTS[old as usize]), d(ROOTS[new as usize]));
            verify_consistency(old, new, &r1, &r2, &want).unwrap();
            if want.is_empty() {
                continue;
            }
            assert!(verify_consistency(old, new, &r2, &r1, &want).is_err(), "swapped roots");
            assert!(verify_consistency(old - 1, new, &r1, &r2, &want).is_err());
            assert!(verify_consistency(old + 1, new, &r1, &r2, &want).is_err());
            assert!(verify_consistency(old, new * 2, &r1, &r2, &want).is_err());
            assert!(verify_consistency(old, new, &r1, &r2, &[]).is_err());
            assert!(verify_consistency(old, new, &r1, &r2, &want[..want.len() - 1]).is_err());
            let mut longer = want.clone();
            longer.push(r1);
            assert!(verify_consistency(old, new, &r1, &r2, &longer).is_err());
            for i in 0..want.len() {
                let mut flipped = want.clone();
                let mut bytes = *flipped[i].as_bytes();
                bytes[0] ^= 16;
                flipped[i] = Sha256Digest::from_bytes(bytes);
                assert!(verify_consistency(old, new, &r1, &r2, &flipped).is_err(), "flipped {i}");
            }
        }
        let (e, a) = (empty_root(), d(ROOTS[1]));
        verify_consistency(0, 0, &a, &a, &[]).unwrap();
        verify_consistency(0, 5, &e, &a, &[]).unwrap();
        assert!(verify_consistency(0, 1, &e, &a, &[e]).is_err());
        assert!(verify_consistency(1, 1, &e, &a, &[]).is_err());
        assert!(verify_consistency(2, 1, &a, &a, &[]).is_err());
        assert!(t.consistency_proof(3, 2).is_err());
    }

    #[test]
    fn a_tree_started_at_a_frontier_proves_what_comes_after_it_as_a_whole_tree_does() {
        // Every start a 37-leaf log can have, reached both ways: from a checkpoint's frontier,
        // and by forgetting the hashes before it. From the start on, every root and proof is
        // the whole tree's; before it, a proof is the whole tree's or refused, never another.
        let leaf = |i: u64| leaf_hash(&(i as u32).to_be_bytes());
        let mut whole = Tree::new();
        for i in 0..37 {
            whole.push(leaf(i));
        }
        for start in 0..=37u64 {
            let mut range = CompactRange::new();
            for i in 0..start {
                range.push(leaf(i));
            }
            let mut from_range = Tree::from_range(&range);
            assert_eq!((from_range.size(), from_range.kept_from()), (start, start));
            for i in start..37 {
                from_range.push(leaf(i));
            }
            let mut forgetful = whole.clone();
            forgetful.forget_before(start);
            for (how, t) in [("from its frontier", &from_range), ("forgetting", &forgetful)] {
                assert_eq!(t.size(), 37, "start {start}, {how}");
                for size in start.max(1)..=37 {
                    assert_eq!(t.root(size), whole.root(size), "root {size}, start {start}, {how}");
                    for index in 0..size {
                        let got = t.inclusion_proof(index, size);
                        if index >= start || got.is_ok() {
                            assert_eq!(got, whole.inclusion_proof(index, size), "leaf {index} of {size}, {how}");
                        } else {
                            assert!(matches!(got, Err(MerkleError::Forgotten { .. })), "{got:?}");
                        }
                    }
                    for old in 0..=size {
                        let got = t.consistency_proof(old, size);
                        if old >= start || got.is_ok() {
                            assert_eq!(got, whole.consistency_proof(old, size), "{old} → {size}, {how}");
                        } else {
                            assert!(matches!(got, Err(MerkleError::Forgotten { .. })), "{got:?}");
                        }
                    }
                }
            }
        }
        // Forgetting never goes back, nor past the end.
        let mut t = whole.clone();
        t.forget_before(20);
        t.forget_before(10);
        assert_eq!(t.kept_from(), 20);
        t.forget_before(99);
        assert_eq!(t.kept_from(), 37);
        assert_eq!(t.root(37), whole.root(37));
    }

    #[test]
    fn every_proof_of_a_larger_tree_verifies() {
        // Beyond the vectors: all pairs in a 37-leaf tree, against roots from the compact range.
        let mut t = Tree::new();
        let mut range = CompactRange::new();
        let mut roots = vec![range.root()];
        for i in 0u32..37 {
            let leaf = leaf_hash(&i.to_be_bytes());
            t.push(leaf);
            range.push(leaf);
            roots.push(range.root());
        }
        for size in 1..=37u64 {
            assert_eq!(t.root(size).unwrap(), roots[size as usize]);
            for index in 0..size {
                let proof = t.inclusion_proof(index, size).unwrap();
                let leaf = leaf_hash(&(index as u32).to_be_bytes());
                verify_inclusion(index, size, &leaf, &proof, &roots[size as usize]).unwrap();
            }
            for old in 0..=size {
                let proof = t.consistency_proof(old, size).unwrap();
                verify_consistency(old, size, &roots[old as usize], &roots[size as usize], &proof).unwrap();
            }
        }
    }
}
