//! Sorting an inventory bigger than memory: rows are buffered, and every
//! [`DEFAULT_SPILL_ROWS`] rows the buffer is sorted and written, age-encrypted
//! to a key held only in memory, to an unnamed temp file (unlinked at once,
//! so no other process can open it, and gone when closed), unless a
//! [`crate::RunSink`] takes it (the collector stores it as a snapshot run).
//! At the end the sorted runs are merged, streaming, into workbook order;
//! [`SortedStream::merge`] merges runs read elsewhere (the renderer's
//! fetched snapshot runs) the same way. Memory stays at about one buffer,
//! whatever the size.

use crate::device::DeviceRow;
use crate::order::{device_order, project_order};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::{BufReader, BufWriter, Read, Seek, Write};

/// Rows held in memory before a sorted run is written out.
pub const DEFAULT_SPILL_ROWS: usize = 50_000;

/// One item of an inventory in workbook order.
// Items are handled one at a time and never stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SortedItem {
    /// A project starts; `rows` rows follow.
    Project {
        /// The project name.
        name: String,
        /// How many rows follow.
        rows: u64,
    },
    /// The next row of the current project.
    Row(DeviceRow),
}

/// A sorted run written to disk, age-encrypted to a key that exists only in
/// this process's memory: even the freed disk blocks of the unlinked file
/// hold no plaintext.
pub(crate) struct Run {
    reader: BufReader<age::stream::StreamReader<BufReader<std::fs::File>>>,
}

impl Run {
    /// Writes `rows` (already sorted) to a new unnamed temp file.
    pub(crate) fn write(
        rows: &[(u32, DeviceRow)],
        key: &age::x25519::Identity,
    ) -> std::io::Result<Self> {
        let file = tempfile::tempfile()?;
        let recipient = key.to_public();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(std::io::Error::other)?;
        let mut out = encryptor.wrap_output(BufWriter::with_capacity(1 << 16, file))?;
        {
            let mut out = BufWriter::with_capacity(1 << 16, &mut out);
            for (project, row) in rows {
                out.write_all(&project.to_le_bytes())?;
                for cell in row.cells() {
                    let length = u32::try_from(cell.len()).map_err(std::io::Error::other)?;
                    out.write_all(&length.to_le_bytes())?;
                    out.write_all(cell.as_bytes())?;
                }
            }
            out.flush()?;
        }
        let mut file = out.finish()?.into_inner().map_err(|err| err.into_error())?;
        file.rewind()?;
        let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(1 << 16, file))
            .map_err(std::io::Error::other)?;
        let reader = decryptor
            .decrypt(std::iter::once(key as &dyn age::Identity))
            .map_err(std::io::Error::other)?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, reader),
        })
    }

    fn next(&mut self) -> std::io::Result<Option<(u32, Box<DeviceRow>)>> {
        let mut word = [0u8; 4];
        match self.reader.read_exact(&mut word) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(err) => return Err(err),
        }
        let project = u32::from_le_bytes(word);
        let mut cells: [String; 12] = Default::default();
        for cell in &mut cells {
            self.reader.read_exact(&mut word)?;
            let length = u32::from_le_bytes(word) as usize;
            // Read into spare capacity: no zeroing of a buffer about to be
            // overwritten.
            let mut bytes = Vec::with_capacity(length);
            (&mut self.reader)
                .take(length as u64)
                .read_to_end(&mut bytes)?;
            if bytes.len() != length {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            *cell = String::from_utf8(bytes).map_err(std::io::Error::other)?;
        }
        Ok(Some((project, Box::new(DeviceRow::from_cells(cells)))))
    }
}

/// A sorted run (as a [`crate::RunSink`] takes it: rows in workbook order,
/// each with its project's index in `names`) as the items of a sorted
/// stream: each project's start, counting its rows in this run, then its
/// rows. The rows are moved out of `rows`, which keeps its capacity for
/// the next run.
pub fn sorted_run_items<'a>(
    rows: &'a mut Vec<(u32, DeviceRow)>,
    names: &[String],
) -> impl Iterator<Item = SortedItem> + Send + use<'a> {
    let mut starts = std::collections::VecDeque::new();
    let mut last: Option<u32> = None;
    for (project, _) in rows.iter() {
        if last != Some(*project) {
            last = Some(*project);
            starts.push_back((names[*project as usize].clone(), 0u64));
        }
        if let Some((_, count)) = starts.back_mut() {
            *count += 1;
        }
    }
    let mut current: Option<u32> = None;
    rows.drain(..).flat_map(move |(project, row)| {
        let start = if current == Some(project) {
            None
        } else {
            current = Some(project);
            starts
                .pop_front()
                .map(|(name, rows)| SortedItem::Project { name, rows })
        };
        start
            .into_iter()
            .chain(std::iter::once(SortedItem::Row(row)))
    })
}

/// Ranks of project indices in tab order: `ranks[i]` is where project
/// `names[i]` comes among the tabs.
pub fn project_ranks(names: &[String]) -> Vec<u32> {
    let mut ranks = ProjectRanks::default();
    ranks.update(names);
    ranks.ranks
}

/// [`project_ranks`] kept up to date while projects are added: each sort
/// buffer needs the ranks of every project seen so far, and sorting all the
/// names again for each buffer cost a quarter of a second per million rows
/// at 10,000 projects. Only the names added since the last update are
/// sorted, then merged into the known order (the same order: tab order is
/// total on distinct names).
#[derive(Debug, Default)]
pub(crate) struct ProjectRanks {
    /// Project indices in tab order.
    order: Vec<u32>,
    /// `ranks[i]`: the place of project `i` in `order`.
    ranks: Vec<u32>,
}

impl ProjectRanks {
    /// The ranks of `names`, of which the first ones are those of the last
    /// update, in the same order (projects are only ever appended).
    pub(crate) fn update(&mut self, names: &[String]) -> &[u32] {
        let known = self.ranks.len();
        debug_assert!(names.len() >= known, "projects are only ever appended");
        if names.len() > known {
            let by_name =
                |a: &u32, b: &u32| project_order(&names[*a as usize], &names[*b as usize]);
            // Indices fit in u32: an inventory numbers its projects in u32.
            let mut added: Vec<u32> = (known as u32..names.len() as u32).collect();
            added.sort_unstable_by(by_name);
            let mut order = Vec::with_capacity(names.len());
            let (mut old, mut new) = (self.order.iter().peekable(), added.iter().peekable());
            while let (Some(a), Some(b)) = (old.peek(), new.peek()) {
                if by_name(a, b) == Ordering::Greater {
                    order.push(**b);
                    new.next();
                } else {
                    order.push(**a);
                    old.next();
                }
            }
            order.extend(old);
            order.extend(new);
            self.ranks = vec![0; names.len()];
            for (rank, index) in order.iter().enumerate() {
                self.ranks[*index as usize] = rank as u32;
            }
            self.order = order;
        }
        &self.ranks
    }
}

/// Sorts a buffer into workbook order; `ranks` from [`ProjectRanks`] over
/// the projects the buffer's indices point into.
pub(crate) fn sort_buffer(buffer: &mut [(u32, DeviceRow)], ranks: &[u32]) {
    buffer.sort_unstable_by(|a, b| {
        ranks[a.0 as usize]
            .cmp(&ranks[b.0 as usize])
            .then_with(|| device_order(&a.1, &b.1))
    });
}

/// The next row of one sorted run. The row is boxed so that the heap moves
/// a few words per sift rather than the whole row.
struct Head {
    rank: u32,
    project: u32,
    row: Box<DeviceRow>,
    source: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    /// Reversed, so the max-heap pops the smallest row first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| device_order(&other.row, &self.row))
            .then_with(|| other.source.cmp(&self.source))
    }
}

/// A sorted run read from elsewhere than this process's temp files (the
/// renderer's fetched snapshot runs), for [`SortedStream::merge`].
pub trait RunRead: Send {
    /// The run's next row with its project's index among the merge's
    /// names, or `None` at its end. Rows come in workbook order.
    fn next_row(&mut self) -> std::io::Result<Option<(u32, Box<DeviceRow>)>>;
}

enum Source {
    Disk(Box<Run>),
    Memory(std::vec::IntoIter<(u32, DeviceRow)>),
    Read(Box<dyn RunRead>),
}

impl Source {
    fn next(&mut self) -> std::io::Result<Option<(u32, Box<DeviceRow>)>> {
        match self {
            Self::Disk(run) => run.next(),
            Self::Memory(rows) => Ok(rows.next().map(|(project, row)| (project, Box::new(row)))),
            Self::Read(run) => run.next_row(),
        }
    }
}

/// The merged, sorted rows: project starts and rows, streaming.
pub struct SortedStream {
    names: Vec<String>,
    counts: Vec<u64>,
    ranks: Vec<u32>,
    sources: Vec<Source>,
    heap: BinaryHeap<Head>,
    current: Option<u32>,
    pending: Option<Box<DeviceRow>>,
    started: bool,
    failed: bool,
}

impl SortedStream {
    pub(crate) fn new(
        names: Vec<String>,
        counts: Vec<u64>,
        runs: Vec<Run>,
        mut buffer: Vec<(u32, DeviceRow)>,
        mut ranks: ProjectRanks,
    ) -> Self {
        let ranks = ranks.update(&names).to_vec();
        sort_buffer(&mut buffer, &ranks);
        let mut sources: Vec<Source> = runs
            .into_iter()
            .map(|run| Source::Disk(Box::new(run)))
            .collect();
        sources.push(Source::Memory(buffer.into_iter()));
        Self::of_sources(names, counts, ranks, sources)
    }

    /// Merges sorted runs read elsewhere into workbook order, as the
    /// collector's own runs are: `names` are the projects the runs' indices
    /// point into, `counts` their rows across all runs (what each project
    /// start announces). A project with no row in any run is not started.
    pub fn merge(names: Vec<String>, counts: Vec<u64>, runs: Vec<Box<dyn RunRead>>) -> Self {
        let sources = runs.into_iter().map(Source::Read).collect();
        let ranks = project_ranks(&names);
        Self::of_sources(names, counts, ranks, sources)
    }

    fn of_sources(
        names: Vec<String>,
        counts: Vec<u64>,
        ranks: Vec<u32>,
        sources: Vec<Source>,
    ) -> Self {
        Self {
            names,
            counts,
            ranks,
            sources,
            heap: BinaryHeap::new(),
            current: None,
            pending: None,
            started: false,
            failed: false,
        }
    }

    fn fill(&mut self, source: usize) -> std::io::Result<()> {
        if let Some((project, row)) = self.sources[source].next()? {
            self.heap.push(Head {
                rank: self.ranks[project as usize],
                project,
                row,
                source,
            });
        }
        Ok(())
    }
}

impl Iterator for SortedStream {
    type Item = std::io::Result<SortedItem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            // After an error the stream is incomplete: end it for good.
            return None;
        }
        let item = self.advance();
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

/// Items the merge thread hands over at a time.
const BATCH: usize = 1024;

/// What the merge thread sends.
enum Batch {
    Items(Vec<SortedItem>),
    Failed(std::io::Error),
    Done,
}

impl SortedStream {
    /// The same items, merged on a thread of their own and handed over in
    /// batches, so the caller's thread can encode and encrypt one batch
    /// while the next is merged (the collector's snapshot: on two cores
    /// the merge no longer waits for the encoding). Two batches in flight:
    /// memory stays bounded.
    ///
    /// The stream ends cleanly only if the merge did: a merge error is the
    /// last item, and a merge thread that stopped without finishing (a
    /// panic) ends the stream with an error, never silently short.
    pub fn merged_ahead(self) -> std::io::Result<MergedAhead> {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        std::thread::Builder::new()
            .name("merge".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(BATCH);
                for item in self {
                    match item {
                        Ok(item) => batch.push(item),
                        Err(err) => {
                            let flushed = batch.is_empty()
                                || tx.send(Batch::Items(std::mem::take(&mut batch))).is_ok();
                            if flushed {
                                let _ = tx.send(Batch::Failed(err));
                            }
                            return;
                        }
                    }
                    if batch.len() == BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        if tx.send(Batch::Items(full)).is_err() {
                            return; // the reader stopped
                        }
                    }
                }
                if !batch.is_empty() && tx.send(Batch::Items(batch)).is_err() {
                    return;
                }
                let _ = tx.send(Batch::Done);
            })?;
        Ok(MergedAhead {
            rx,
            current: Vec::new().into_iter(),
            finished: false,
        })
    }
}

/// A [`SortedStream`] merged on its own thread ([`SortedStream::merged_ahead`]).
pub struct MergedAhead {
    rx: std::sync::mpsc::Receiver<Batch>,
    current: std::vec::IntoIter<SortedItem>,
    finished: bool,
}

impl Iterator for MergedAhead {
    type Item = std::io::Result<SortedItem>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(Ok(item));
            }
            if self.finished {
                return None;
            }
            match self.rx.recv() {
                Ok(Batch::Items(items)) => self.current = items.into_iter(),
                Ok(Batch::Done) => self.finished = true,
                Ok(Batch::Failed(err)) => {
                    self.finished = true;
                    return Some(Err(err));
                }
                Err(_) => {
                    self.finished = true;
                    return Some(Err(std::io::Error::other(
                        "the merge thread stopped before the end",
                    )));
                }
            }
        }
    }
}

impl SortedStream {
    fn advance(&mut self) -> Option<std::io::Result<SortedItem>> {
        if !self.started {
            self.started = true;
            for source in 0..self.sources.len() {
                if let Err(err) = self.fill(source) {
                    return Some(Err(err));
                }
            }
        }
        if let Some(row) = self.pending.take() {
            return Some(Ok(SortedItem::Row(*row)));
        }
        let head = self.heap.pop()?;
        if let Err(err) = self.fill(head.source) {
            return Some(Err(err));
        }
        if self.current != Some(head.project) {
            self.current = Some(head.project);
            self.pending = Some(head.row);
            let index = head.project as usize;
            return Some(Ok(SortedItem::Project {
                name: self.names[index].clone(),
                rows: self.counts[index],
            }));
        }
        Some(Ok(SortedItem::Row(*head.row)))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DeviceRow, Inventory, SortedItem};

    fn inventory(rows: u32) -> Inventory {
        let mut inventory = Inventory::with_spill_rows(7);
        for i in 0..rows {
            let row = DeviceRow {
                device_name: format!("host-{}", (i * 7919) % 1000),
                account: format!("acct{i}"),
                ..DeviceRow::default()
            };
            inventory
                .push(["b", "a", "c"][(i % 3) as usize], row)
                .unwrap();
        }
        inventory
    }

    fn flat(items: impl Iterator<Item = std::io::Result<SortedItem>>) -> Vec<String> {
        items
            .map(|item| match item.unwrap() {
                SortedItem::Project { name, rows } => format!("project {name} {rows}"),
                SortedItem::Row(row) => format!("{} {}", row.device_name, row.account),
            })
            .collect()
    }

    /// Ranks kept up to date as projects arrive, in batches of any size,
    /// are those of sorting all the names at once, including names that
    /// compare equal but for case, leading zeros or raw text.
    #[test]
    fn ranks_updated_as_projects_arrive_equal_those_of_one_sort() {
        let names: Vec<String> = (0..400u32)
            .map(|i| match i % 5 {
                0 => format!("proj{}", (i * 7919) % 97),
                1 => format!("Proj{:03}", (i * 31) % 89),
                2 => format!("p-{}-{}", i % 7, (i * 13) % 11),
                3 => format!("{}", (i * 104_729) % 1009),
                _ => format!("PROJ{}x", i % 50),
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .rev()
            .collect();
        let expected = super::project_ranks(&names);
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by_key(|i| expected[*i]);
        for pair in order.windows(2) {
            assert_eq!(
                crate::order::project_order(&names[pair[0]], &names[pair[1]]),
                std::cmp::Ordering::Less
            );
        }
        for steps in [&[1usize][..], &[3, 1, 40], &[200, 1], &[0, 7]] {
            let mut ranks = super::ProjectRanks::default();
            let mut seen = 0;
            let mut step = steps.iter().cycle();
            while seen < names.len() {
                seen = (seen + step.next().copied().unwrap_or(1).max(1)).min(names.len());
                let updated = ranks.update(&names[..seen]).to_vec();
                assert_eq!(
                    updated,
                    super::project_ranks(&names[..seen]),
                    "steps {steps:?}"
                );
            }
            assert_eq!(ranks.update(&names), &expected[..]);
        }
    }

    /// Merged on its own thread, across several batches, the stream is item
    /// for item the one merged in place.
    #[test]
    fn merging_ahead_hands_over_the_same_items_in_the_same_order() {
        let rows = 3 * super::BATCH as u32 + 17;
        let in_place = flat(inventory(rows).into_sorted_stream().unwrap().stream);
        let ahead = flat(
            inventory(rows)
                .into_sorted_stream()
                .unwrap()
                .stream
                .merged_ahead()
                .unwrap(),
        );
        assert_eq!(in_place.len(), rows as usize + 3);
        assert!(in_place == ahead, "the same items in the same order");
    }
}
