//! Durable Raft storage on redb.
//!
//! Why redb: an embedded, pure-Rust, ACID key-value store whose commits are
//! durable (fsync) when they return, with no compaction threads or C++ build
//! (tikv's raft-engine is the other candidate; it is built for far larger
//! logs than a controller's and pulls in much more). The controller's log is
//! small and compacted behind snapshots, so the store keeps the live log in
//! raft-rs's own `MemStorage` (the reference implementation of
//! `raft::Storage`) and writes every change through to redb before it
//! returns. On open, the `MemStorage` is rebuilt from disk: snapshot, then
//! entries, then hard state and conf state.

use crate::node::LogStore;
use protobuf::Message as _;
use raft::prelude::*;
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT: &str = "snapshot";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("raft store {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("raft store {path}: corrupt {what}: {detail}")]
    Corrupt {
        path: String,
        what: &'static str,
        detail: String,
    },
}

/// A `raft::Storage` that survives crashes.
#[derive(Clone)]
pub struct DiskStorage {
    mem: MemStorage,
    snapshot: Arc<std::sync::RwLock<Option<Snapshot>>>,
    db: Arc<Database>,
    path: Arc<str>,
}

fn db_err(path: &str, e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::Db {
        path: path.to_string(),
        source: Box::new(e),
    }
}

/// A failed write to the log store leaves the node unable to promise
/// anything; raft-rs has no way to report it from here, so the process
/// stops rather than acknowledge what is not on disk.
fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("raft store: {what} failed, refusing to go on without durable state: {e}")
}

/// Creates an empty store at `path` so that it appears whole or not at all:
/// written beside it (`<path>.new`), synced, then renamed into place. A
/// process killed while redb writes a new file's header leaves a file that
/// redb refuses ("not a redb database") and the controller could never
/// start again on its data folder; a leftover `.new` is only ever that
/// unfinished creation, and is replaced.
fn create_whole(path: &Path) -> Result<(), redb::Error> {
    let mut new = path.as_os_str().to_owned();
    new.push(".new");
    let new = std::path::PathBuf::from(new);
    let _ = std::fs::remove_file(&new);
    drop(Database::create(&new)?);
    std::fs::File::open(&new)
        .and_then(|f| f.sync_all())
        .map_err(redb::StorageError::from)?;
    std::fs::rename(&new, path).map_err(redb::StorageError::from)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(redb::StorageError::from)?;
    Ok(())
}

impl DiskStorage {
    /// Opens (or creates) the store at `path`. A new store starts with
    /// `voters` as its configuration; an existing one keeps its own.
    pub fn open(path: &Path, voters: &[u64]) -> Result<DiskStorage, StorageError> {
        let p = path.display().to_string();
        if !path.exists() {
            create_whole(path).map_err(|e| db_err(&p, e))?;
        }
        let db = Database::create(path).map_err(|e| db_err(&p, e))?;
        let mem = MemStorage::new();
        let mut latest = None;
        let fresh;
        {
            let tx = db.begin_read().map_err(|e| db_err(&p, e))?;
            let meta = match tx.open_table(META) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_err(&p, e)),
            };
            fresh = meta.is_none();
            if let Some(meta) = meta {
                let get = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
                    Ok(meta
                        .get(key)
                        .map_err(|e| db_err(&p, e))?
                        .map(|v| v.value().to_vec()))
                };
                let corrupt =
                    |what: &'static str, e: protobuf::ProtobufError| StorageError::Corrupt {
                        path: p.clone(),
                        what,
                        detail: e.to_string(),
                    };
                if let Some(bytes) = get(SNAPSHOT)? {
                    let snap =
                        Snapshot::parse_from_bytes(&bytes).map_err(|e| corrupt("snapshot", e))?;
                    mem.wl()
                        .apply_snapshot(snap.clone())
                        .map_err(|e| db_err(&p, e))?;
                    latest = Some(snap);
                }
                let entries = tx.open_table(ENTRIES).map_err(|e| db_err(&p, e))?;
                let mut log = Vec::new();
                for item in entries.iter().map_err(|e| db_err(&p, e))? {
                    let (_, v) = item.map_err(|e| db_err(&p, e))?;
                    log.push(Entry::parse_from_bytes(v.value()).map_err(|e| corrupt("entry", e))?);
                }
                let first = mem.first_index().unwrap_or(1);
                log.retain(|e| e.index >= first);
                if !log.is_empty() {
                    mem.wl().append(&log).map_err(|e| db_err(&p, e))?;
                }
                if let Some(bytes) = get(HARD_STATE)? {
                    mem.wl().set_hardstate(
                        HardState::parse_from_bytes(&bytes)
                            .map_err(|e| corrupt("hard state", e))?,
                    );
                }
                if let Some(bytes) = get(CONF_STATE)? {
                    mem.wl().set_conf_state(
                        ConfState::parse_from_bytes(&bytes)
                            .map_err(|e| corrupt("conf state", e))?,
                    );
                }
            }
        }
        let store = DiskStorage {
            mem,
            snapshot: Arc::new(std::sync::RwLock::new(latest)),
            db: Arc::new(db),
            path: p.into(),
        };
        if fresh {
            let cs = ConfState::from((voters.to_vec(), vec![]));
            store.write(|_, meta| {
                meta.insert(CONF_STATE, cs.write_to_bytes().expect("encodes").as_slice())?;
                Ok(())
            })?;
            store.mem.wl().set_conf_state(cs);
        }
        Ok(store)
    }

    fn write(
        &self,
        f: impl FnOnce(
            &mut redb::Table<u64, &[u8]>,
            &mut redb::Table<&str, &[u8]>,
        ) -> Result<(), redb::StorageError>,
    ) -> Result<(), StorageError> {
        let p = &*self.path;
        let tx = self.db.begin_write().map_err(|e| db_err(p, e))?;
        {
            let mut entries = tx.open_table(ENTRIES).map_err(|e| db_err(p, e))?;
            let mut meta = tx.open_table(META).map_err(|e| db_err(p, e))?;
            f(&mut entries, &mut meta).map_err(|e| db_err(p, e))?;
        }
        tx.commit().map_err(|e| db_err(p, e))
    }

    /// Drops entries before `index` (they are covered by a snapshot).
    pub fn compact(&self, index: u64) -> Result<(), StorageError> {
        self.write(|entries, _| {
            entries.retain(|k, _| k >= index)?;
            Ok(())
        })?;
        self.mem
            .wl()
            .compact(index)
            .map_err(|e| db_err(&self.path, e))
    }

    /// Records a snapshot of the state machine at `index` (for followers that
    /// fall behind the compacted log) and compacts the log behind it.
    pub fn snapshot_at(&self, index: u64, data: Vec<u8>) -> Result<(), StorageError> {
        let term = self.mem.term(index).map_err(|e| db_err(&self.path, e))?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        let conf = self
            .mem
            .initial_state()
            .map_err(|e| db_err(&self.path, e))?
            .conf_state;
        meta.set_conf_state(conf);
        let bytes = snap.write_to_bytes().expect("encodes");
        self.write(|_, m| {
            m.insert(SNAPSHOT, bytes.as_slice())?;
            Ok(())
        })?;
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(snap);
        self.compact(index)
    }
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    /// The last snapshot taken of the state machine (raft-rs's own
    /// `MemStorage` snapshot carries no state machine data).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &*self.snapshot.read().unwrap_or_else(|e| e.into_inner()) {
            Some(s) if s.get_metadata().index >= request_index => Ok(s.clone()),
            _ => Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}

impl LogStore for DiskStorage {
    fn persist(&self, new: &[Entry], hs: Option<HardState>) -> raft::Result<()> {
        let first = new.first().map(|e| e.index);
        let encoded: Vec<(u64, Vec<u8>)> = new
            .iter()
            .map(|e| (e.index, e.write_to_bytes().expect("entries encode")))
            .collect();
        let hs_bytes = hs.as_ref().map(|h| h.write_to_bytes().expect("encodes"));
        if first.is_none() && hs_bytes.is_none() {
            return Ok(());
        }
        self.write(|entries, meta| {
            if let Some(first) = first {
                entries.retain(|k, _| k < first)?;
                for (i, bytes) in &encoded {
                    entries.insert(*i, bytes.as_slice())?;
                }
            }
            if let Some(b) = &hs_bytes {
                meta.insert(HARD_STATE, b.as_slice())?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| fatal("append", e));
        if !new.is_empty() {
            self.mem.wl().append(new)?;
        }
        if let Some(hs) = hs {
            self.mem.wl().set_hardstate(hs);
        }
        Ok(())
    }

    fn append(&self, new: &[Entry]) -> raft::Result<()> {
        let Some(first) = new.first().map(|e| e.index) else {
            return Ok(());
        };
        let encoded: Vec<(u64, Vec<u8>)> = new
            .iter()
            .map(|e| (e.index, e.write_to_bytes().expect("entries encode")))
            .collect();
        // Entries from `first` on replace whatever the log held there.
        self.write(|entries, _| {
            entries.retain(|k, _| k < first)?;
            for (i, bytes) in &encoded {
                entries.insert(*i, bytes.as_slice())?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| fatal("append", e));
        self.mem.wl().append(new)
    }

    fn set_hard_state(&self, hs: HardState) {
        let bytes = hs.write_to_bytes().expect("encodes");
        self.write(|_, meta| {
            meta.insert(HARD_STATE, bytes.as_slice())?;
            Ok(())
        })
        .unwrap_or_else(|e| fatal("hard state", e));
        self.mem.wl().set_hardstate(hs);
    }

    /// In memory only: a restarted replica learns the commit index from the
    /// leader again (raft-rs never needs it durable for safety), and writing
    /// it on every round would double the fsyncs of the write path.
    fn set_commit(&self, commit: u64) {
        self.mem.wl().mut_hard_state().set_commit(commit);
    }

    fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()> {
        let bytes = snapshot.write_to_bytes().expect("encodes");
        let index = snapshot.get_metadata().index;
        self.mem.wl().apply_snapshot(snapshot.clone())?;
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
        let RaftState {
            hard_state: hs,
            conf_state: cs,
        } = self.mem.initial_state()?;
        self.write(|entries, meta| {
            entries.retain(|k, _| k > index)?;
            meta.insert(SNAPSHOT, bytes.as_slice())?;
            meta.insert(HARD_STATE, hs.write_to_bytes().expect("encodes").as_slice())?;
            meta.insert(CONF_STATE, cs.write_to_bytes().expect("encodes").as_slice())?;
            Ok(())
        })
        .unwrap_or_else(|e| fatal("snapshot", e));
        Ok(())
    }

    fn snapshot_at(&self, index: u64, data: Vec<u8>) -> bool {
        DiskStorage::snapshot_at(self, index, data).is_ok()
    }

    fn set_conf_state(&self, cs: ConfState) {
        let bytes = cs.write_to_bytes().expect("encodes");
        self.write(|_, meta| {
            meta.insert(CONF_STATE, bytes.as_slice())?;
            Ok(())
        })
        .unwrap_or_else(|e| fatal("conf state", e));
        self.mem.wl().set_conf_state(cs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("keel-raftstore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("raft.redb")
    }

    /// A controller killed while its store was first created leaves at
    /// most the unfinished `.new` file (redb's header half written), never
    /// a `raft.redb` that redb refuses: the next start creates it afresh.
    #[test]
    fn a_creation_cut_short_leaves_nothing_that_stops_the_next_start() {
        let path = tmp("cut");
        let new = path.with_file_name("raft.redb.new");
        std::fs::write(&new, b"redb\x1a\x0a\xa9\x0d\x0a").unwrap();
        assert!(Database::create(&new).is_err(), "a half-written header");
        let s = DiskStorage::open(&path, &[1, 2, 3]).unwrap();
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        assert!(!new.exists());
        drop(s);
        // Reopened, it is the same store.
        let s = DiskStorage::open(&path, &[9]).unwrap();
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        // A store that redb refuses is still refused, never replaced: it
        // may hold the only copy of what this replica promised.
        drop(s);
        std::fs::write(&path, b"not a database").unwrap();
        assert!(DiskStorage::open(&path, &[1]).is_err());
    }

    #[test]
    fn what_was_written_survives_a_reopen() {
        let path = tmp("reopen");
        {
            let s = DiskStorage::open(&path, &[1, 2, 3]).unwrap();
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // a new leader overwrites the tail
            s.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")]).unwrap();
            let hs = HardState {
                term: 2,
                vote: 3,
                commit: 3,
                ..Default::default()
            };
            s.set_hard_state(hs);
        }
        let s = DiskStorage::open(&path, &[9]).unwrap();
        let st = s.initial_state().unwrap();
        assert_eq!(
            (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
            (2, 3, 3)
        );
        assert_eq!(
            st.conf_state.voters,
            vec![1, 2, 3],
            "an existing store keeps its members"
        );
        assert_eq!(s.last_index().unwrap(), 4);
        let got = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = got.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, vec![&b"a"[..], b"b", b"C", b"d"]);
        assert_eq!(s.term(3).unwrap(), 2);
    }

    #[test]
    fn a_snapshot_compacts_the_log_and_is_served_after_a_reopen() {
        let path = tmp("snap");
        {
            let s = DiskStorage::open(&path, &[1]).unwrap();
            let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"x")).collect();
            s.append(&entries).unwrap();
            let hs = HardState {
                term: 1,
                commit: 10,
                ..Default::default()
            };
            s.set_hard_state(hs);
            s.snapshot_at(8, b"state at 8".to_vec()).unwrap();
            assert_eq!(s.first_index().unwrap(), 8);
        }
        let s = DiskStorage::open(&path, &[1]).unwrap();
        let snap = s.snapshot(8, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 8);
        assert_eq!(&snap.data[..], b"state at 8");
        assert_eq!(s.last_index().unwrap(), 10);
        assert!(s.snapshot(9, 2).is_err(), "no snapshot that new yet");
    }
}
