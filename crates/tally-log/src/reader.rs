//! [`LogReader`] for the segmented log: own file handles, positional reads, and a
//! lazily built per-segment index of record offsets.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::LogError;
use crate::format::{self, RECORD_HEADER_SIZE, RECORD_PREFIX_SIZE, SEGMENT_HEADER_SIZE};
use crate::limits::READER_SEGMENTS_CACHED_MAX;
use crate::log::{Shared, View};
use crate::scan::{self, ReadWindow};
use crate::storage::{Storage, StorageFile};
use crate::{Batch, LogReader};

/// A reader of a [`SegmentedLog`](crate::SegmentedLog). It shares only the durable view with
/// the writer (a short lock to copy it), so it never blocks an append.
#[derive(Debug)]
pub(crate) struct SegmentReader {
    storage: Arc<dyn Storage>,
    shared: Arc<Shared>,
    /// Most recently used last.
    segments: Vec<CachedSegment>,
    window: ReadWindow,
}

#[derive(Debug)]
struct CachedSegment {
    first_position: u64,
    path: PathBuf,
    file: Box<dyn StorageFile>,
    /// `(first_position, offset)` of every record indexed so far, ascending.
    index: Vec<(u64, u64)>,
    /// Offset just past the last indexed record.
    indexed_end_offset: u64,
    /// Position just past the last indexed record.
    indexed_next_position: u64,
    /// The file length, known once the segment is sealed (it never changes after that).
    sealed_len: Option<u64>,
}

impl SegmentReader {
    pub(crate) fn new(storage: Arc<dyn Storage>, shared: Arc<Shared>) -> SegmentReader {
        SegmentReader {
            storage,
            shared,
            segments: Vec::new(),
            window: ReadWindow::default(),
        }
    }

    /// The cached segment `segment_index` of `view`, opened and indexed up to its durable end.
    fn segment(
        &mut self,
        view: &View,
        segment_index: usize,
    ) -> Result<&mut CachedSegment, LogError> {
        let meta = &view.segments[segment_index];
        let cached = match self
            .segments
            .iter()
            .position(|s| s.first_position == meta.first_position)
        {
            Some(cached) => cached,
            None => {
                if self.segments.len() == READER_SEGMENTS_CACHED_MAX {
                    self.segments.remove(0);
                }
                self.segments.push(CachedSegment::open(
                    &*self.storage,
                    meta.first_position,
                    meta.path.clone(),
                )?);
                self.segments.len() - 1
            }
        };
        // Move to the back: the least recently used segment is evicted first.
        let segment = self.segments.remove(cached);
        self.segments.push(segment);
        let segment = self.segments.last_mut().expect("just pushed");

        let next_segment = view.segments.get(segment_index + 1);
        let (end_offset, end_position) = match next_segment {
            None => (view.tail_end_offset, view.next_position),
            Some(next) => (segment.sealed_len()?, next.first_position),
        };
        segment.extend_index(&mut self.window, end_offset)?;
        // Pair the offsets found on disk with the positions the writer published.
        if segment.indexed_next_position != end_position {
            let reason = format!(
                "the segment's records end at position {} but the log continues at position {end_position}",
                segment.indexed_next_position
            );
            return Err(LogError::corrupt(
                &segment.path,
                segment.indexed_end_offset,
                reason,
            ));
        }
        Ok(segment)
    }
}

impl CachedSegment {
    fn open(
        storage: &dyn Storage,
        first_position: u64,
        path: PathBuf,
    ) -> Result<CachedSegment, LogError> {
        let file = storage
            .open_read(&path)
            .map_err(LogError::io("open", &path))?;
        let file_len = file.len().map_err(LogError::io("stat", &path))?;
        scan::check_segment_header(&*file, file_len, first_position)
            .map_err(LogError::io("read", &path))?
            .map_err(|reason| LogError::corrupt(&path, 0, reason))?;
        Ok(CachedSegment {
            first_position,
            path,
            file,
            index: Vec::new(),
            indexed_end_offset: SEGMENT_HEADER_SIZE,
            indexed_next_position: first_position,
            sealed_len: None,
        })
    }

    fn sealed_len(&mut self) -> Result<u64, LogError> {
        if let Some(len) = self.sealed_len {
            return Ok(len);
        }
        let len = self.file.len().map_err(LogError::io("stat", &self.path))?;
        self.sealed_len = Some(len);
        Ok(len)
    }

    /// Indexes records from where the index ends up to `end_offset`, reading only their
    /// headers. Lengths and positions are checked here; CRCs when each record is read.
    fn extend_index(&mut self, window: &mut ReadWindow, end_offset: u64) -> Result<(), LogError> {
        while self.indexed_end_offset < end_offset {
            let offset = self.indexed_end_offset;
            let available = end_offset - offset;
            if available < RECORD_PREFIX_SIZE as u64 {
                return Err(LogError::corrupt(
                    &self.path,
                    offset,
                    "partial record header before the durable end",
                ));
            }
            let bytes = window
                .get(
                    self.first_position,
                    &*self.file,
                    offset,
                    RECORD_PREFIX_SIZE,
                    end_offset,
                )
                .map_err(LogError::io("read", &self.path))?;
            let prefix = format::decode_prefix(bytes);
            format::check_prefix(&prefix, available)
                .map_err(|reason| LogError::corrupt(&self.path, offset, reason))?;
            if prefix.header.first_position != self.indexed_next_position
                || prefix.header.event_count == 0
            {
                let reason = format!(
                    "position discontinuity: expected a batch starting at position {}, found {} with {} event(s)",
                    self.indexed_next_position, prefix.header.first_position, prefix.header.event_count
                );
                return Err(LogError::corrupt(&self.path, offset, reason));
            }
            self.index.push((prefix.header.first_position, offset));
            self.indexed_end_offset += prefix.record_size();
            self.indexed_next_position += u64::from(prefix.header.event_count);
        }
        assert_eq!(self.indexed_end_offset, end_offset);
        Ok(())
    }

    /// Reads and verifies the record `entry` of the index.
    fn read_record(&self, window: &mut ReadWindow, entry: usize) -> Result<Batch, LogError> {
        let (position, offset) = self.index[entry];
        let end = self
            .index
            .get(entry + 1)
            .map_or(self.indexed_end_offset, |next| next.1);
        let batch = scan::read_record(window, self.first_position, &*self.file, offset, end)
            .map_err(LogError::io("read", &self.path))?
            .map_err(|reason| LogError::corrupt(&self.path, offset, reason))?;
        // Pair assertion across the disk boundary: the CRC-checked record is the one the index
        // promised. The index read the same bytes, so a mismatch means the file changed under us.
        let size = format::payload_length(batch.body.len()) as u64 + RECORD_HEADER_SIZE;
        if batch.header.first_position != position || offset + size != end {
            return Err(LogError::corrupt(
                &self.path,
                offset,
                "record changed after it was indexed",
            ));
        }
        Ok(batch)
    }
}

impl LogReader for SegmentReader {
    fn another(&self) -> Box<dyn LogReader> {
        Box::new(SegmentReader::new(
            Arc::clone(&self.storage),
            Arc::clone(&self.shared),
        ))
    }

    fn read_from(
        &mut self,
        position: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<Batch, LogError>> + '_>, LogError> {
        let view = self.shared.view();
        if position >= view.next_position {
            return Ok(Box::new(std::iter::empty()));
        }
        let segment_index = view
            .segments
            .partition_point(|s| s.first_position <= position)
            .saturating_sub(1);
        let segment = self.segment(&view, segment_index)?;
        let entry = segment
            .index
            .partition_point(|&(first_position, _)| first_position <= position)
            .saturating_sub(1);
        Ok(Box::new(ReadIter {
            reader: self,
            view,
            segment_index,
            entry,
            done: false,
        }))
    }
}

/// Iterates records in position order across segments, up to the view's durable end. Stops
/// after the first error.
struct ReadIter<'a> {
    reader: &'a mut SegmentReader,
    view: View,
    segment_index: usize,
    entry: usize,
    done: bool,
}

impl ReadIter<'_> {
    fn step(&mut self) -> Result<Option<Batch>, LogError> {
        loop {
            let segment = self.reader.segment(&self.view, self.segment_index)?;
            if let Some(&(position, _)) = segment.index.get(self.entry) {
                assert!(position < self.view.next_position);
                let segment = &self
                    .reader
                    .segments
                    .last()
                    .expect("segment() leaves it last");
                let batch = segment.read_record(&mut self.reader.window, self.entry)?;
                self.entry += 1;
                return Ok(Some(batch));
            }
            if self.segment_index + 1 == self.view.segments.len() {
                return Ok(None);
            }
            self.segment_index += 1;
            self.entry = 0;
        }
    }
}

impl Iterator for ReadIter<'_> {
    type Item = Result<Batch, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}
