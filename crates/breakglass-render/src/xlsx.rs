//! A minimal, streaming SpreadsheetML (`.xlsx`) package writer.
//!
//! Each worksheet is written completely, as one deflated zip entry, before
//! the next one begins: only one zip entry is open at a time, rows pass
//! through a small buffer on their way to the compressor, and of a finished
//! sheet only its name (and filter range) is kept. Memory therefore stays
//! flat whatever the number of rows or sheets, no temp file is made per
//! sheet, and the writer holds exactly one open file (the package itself).
//! The parts that list the sheets (`xl/workbook.xml`, its relationships and
//! `[Content_Types].xml`) are written by [`Package::finish`]; the fixed
//! parts (`_rels/.rels` first, so file-type sniffers recognise the package,
//! then the styles and document properties) when the package is created.
//! A sheet may be written last and still be listed first (the Summary tab).
//!
//! Deflating runs on a thread of its own ([`Compressor`]): the caller's
//! thread produces the XML (and whatever feeds it: a snapshot, a merge of
//! sorted runs) while the other core compresses the previous buffers, in
//! order, through a short bounded queue, so memory stays flat. A buffer
//! goes over only when full (or at the end), whatever parts it holds:
//! small sheets travel together, so a thousand tabs do not cost a thousand
//! thread wake-ups.
//!
//! Every text cell is an inline string (`t="inlineStr"`), so no shared
//! string table grows with the data. Text is escaped the way Excel and
//! rust_xlsxwriter do it: `& < >` as entities; the C0 control characters
//! XML 1.0 forbids (all but tab and line feed; carriage return too, since
//! an XML parser would turn it into a line feed) and U+FFFE/U+FFFF as
//! `_xHHHH_`; and a literal `_xHHHH_` in the text as `_x005F_xHHHH_`, so
//! readers that decode those escapes give back exactly the original text.

use chrono::{DateTime, Datelike, Timelike, Utc};
use std::io::{self, Seek, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Excel's last row number (1-based).
pub(crate) const MAX_ROW: u32 = 1_048_576;

/// Excel's last column number (1-based, `XFD`).
const MAX_COLUMN: u16 = 16_384;

/// Bytes gathered before they are handed to the compressor.
const FLUSH_AT: usize = 128 * 1024;

/// Bytes of sheet XML past which the caller should end the sheet and go
/// on in a new one: ZIP64's 4 GiB threshold less room for one more row of
/// the largest kind (12 cells of 32,767 characters at up to 7 bytes each,
/// about 2.8 MB) and the end of the sheet. No part then needs ZIP64
/// extensions, which some readers (LibreOffice 7.4) cannot open.
pub(crate) const SHEET_PART_LIMIT: u64 = u32::MAX as u64 - 16 * 1024 * 1024;

/// Deflate level. Measured on 1M rows / 1,000 projects (writer alone):
/// level 1 takes 1.5 s for 88 MB, level 2 1.9 s for 65 MB, level 3 2.9 s
/// for 62 MB, level 6 5.4 s for 57 MB. Level 1 made workbooks 1.36× the
/// XlsxWriter peer's (issue #13 asks ≤ 1.1×); `make bench` on 2026-11-30
/// put level 2 at 1.12× (75.6 MB against the peer's 67.5 MB at 1M rows),
/// so level 3: deflating runs on its own core while the other writes the
/// XML, and level 3 still deflates faster than the XML is written.
const DEFLATE_LEVEL: i64 = 3;

/// XML buffers queued for the compressor thread (each about [`FLUSH_AT`]).
const QUEUE: usize = 4;

/// One buffer for the compressor thread: bytes of the open entry, then of
/// each entry `starts` begins at its offset (ascending) in `bytes`.
struct Batch {
    bytes: Vec<u8>,
    starts: Vec<(usize, String)>,
}

/// A [`ZipWriter`] on a thread of its own, fed buffers in order; each
/// buffer says where the entries it holds begin.
struct Compressor<W> {
    jobs: Option<std::sync::mpsc::SyncSender<Batch>>,
    /// Emptied buffers coming back for reuse.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: Option<std::thread::JoinHandle<io::Result<W>>>,
    /// Entries begun in the caller's buffer since the last batch went.
    starts: Vec<(usize, String)>,
    /// Batches handed over so far.
    #[cfg(test)]
    sent: usize,
}

impl<W: Write + Seek + Send + 'static> Compressor<W> {
    fn new(out: W, options: SimpleFileOptions) -> io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Batch>(QUEUE);
        let (give_back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("xlsx-deflate".into())
            .spawn(move || -> io::Result<W> {
                let mut zip = ZipWriter::new(out);
                for Batch { mut bytes, starts } in queue {
                    let mut from = 0;
                    for (at, name) in starts {
                        zip.write_all(&bytes[from..at])?;
                        zip.start_file(name, options)?;
                        from = at;
                    }
                    zip.write_all(&bytes[from..])?;
                    bytes.clear();
                    let _ = give_back.send(bytes);
                }
                Ok(zip.finish()?)
            })?;
        Ok(Self {
            jobs: Some(jobs),
            spare,
            worker: Some(worker),
            starts: Vec::new(),
            #[cfg(test)]
            sent: 0,
        })
    }

    /// Begins entry `name` at `buf`'s end (`buf`: what [`Self::write`] is
    /// handed next).
    fn start_file(&mut self, buf: &[u8], name: String) {
        self.starts.push((buf.len(), name));
    }

    /// Hands `buf`'s bytes (and the entries begun in it) to the compressor,
    /// leaving `buf` empty.
    fn write(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() && self.starts.is_empty() {
            return Ok(());
        }
        let empty = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(buf.capacity()));
        let batch = Batch {
            bytes: std::mem::replace(buf, empty),
            starts: std::mem::take(&mut self.starts),
        };
        #[cfg(test)]
        {
            self.sent += 1;
        }
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(batch));
        match sent {
            Some(Ok(())) => Ok(()),
            // The worker stopped: it failed; its error says why.
            _ => match self.join() {
                Err(err) => Err(err),
                Ok(_) => Err(io::Error::other("the xlsx compressor stopped early")),
            },
        }
    }

    fn join(&mut self) -> io::Result<W> {
        self.jobs = None;
        match self.worker.take() {
            Some(worker) => worker
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the xlsx compressor panicked"))),
            None => Err(io::Error::other("the xlsx compressor already finished")),
        }
    }

    /// Hands over `buf`, waits for everything queued, writes the zip's
    /// directory and returns the writer.
    fn finish(mut self, buf: &mut Vec<u8>) -> io::Result<W> {
        self.write(buf)?;
        self.join()
    }
}

impl<W> Drop for Compressor<W> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

const XML_DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n";
const NS_MAIN: &str = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
const NS_REL: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
const NS_PKG_REL: &str = "http://schemas.openxmlformats.org/package/2006/relationships";
const CT_WORKSHEET: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml";

/// A cell's look: an index into the `cellXfs` of `xl/styles.xml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// The default look.
    Normal,
    /// Bold (headers, labels).
    Bold,
}

/// Where a sheet goes in the workbook's tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// After the sheets already started.
    Next,
    /// Before all other sheets, wherever it was written (at most one sheet).
    First,
}

/// How a sheet looks, fixed when it starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SheetSetup<'a> {
    /// Column widths in Excel character units, from column A on.
    pub widths: &'a [f64],
    /// Freeze row 1 (the header) so it stays in view while scrolling.
    pub freeze_header: bool,
    /// Put an autofilter over this many columns, from row 1 to the last row.
    pub filter_columns: Option<u16>,
    /// The tab shown when the file opens (exactly one sheet should be).
    pub selected: bool,
    /// Tab order.
    pub placement: Placement,
}

/// A finished (or open) sheet, as `xl/workbook.xml` will list it.
#[derive(Debug)]
struct SheetEntry {
    name: String,
    /// `n` of `xl/worksheets/sheet{n}.xml`: the order sheets were written.
    part: usize,
    /// Columns and last row of the autofilter, once the sheet is finished.
    filter: Option<(u16, u32)>,
}

/// The sheet being written.
#[derive(Debug)]
struct OpenSheet {
    /// The last row started (0 = none).
    row: u32,
    /// Bytes of this sheet's XML already handed to the compressor.
    flushed: u64,
    /// Where this sheet's XML begins in the unsent buffer (after the end of
    /// the sheets before it, until the buffer goes).
    begins_at: usize,
    /// Its number in decimal, for cell references.
    row_digits: Vec<u8>,
    /// Inside `<row>`.
    in_row: bool,
    /// The last column written in the open row (0 = none).
    column: u16,
    filter_columns: Option<u16>,
}

/// Streams worksheets into an `.xlsx` package written to `W`.
pub(crate) struct Package<W: Write + Seek + Send + 'static> {
    /// Compresses every part with the same options: deflated, no ZIP64
    /// extensions (every part stays under 4 GiB, see [`SHEET_PART_LIMIT`]).
    zip: Compressor<W>,
    /// XML not yet handed to the compressor.
    buf: Vec<u8>,
    /// Sheets in the order they were written.
    sheets: Vec<SheetEntry>,
    /// Index into `sheets` of the sheet placed first, if any.
    first: Option<usize>,
    open: Option<OpenSheet>,
}

fn misuse(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("xlsx writer misused: {what}"),
    )
}

impl<W: Write + Seek + Send + 'static> Package<W> {
    /// Starts a package on `out` and writes its fixed parts; `created` is
    /// the document's creation time (document properties, entry times).
    pub(crate) fn new(out: W, created: DateTime<Utc>) -> io::Result<Self> {
        let mut options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(DEFLATE_LEVEL));
        if let Ok(time) = zip::DateTime::from_date_and_time(
            u16::try_from(created.year()).unwrap_or(0),
            created.month() as u8,
            created.day() as u8,
            created.hour() as u8,
            created.minute() as u8,
            created.second() as u8,
        ) {
            options = options.last_modified_time(time);
        }
        let mut package = Self {
            zip: Compressor::new(out, options)?,
            buf: Vec::with_capacity(FLUSH_AT + 64 * 1024),
            sheets: Vec::new(),
            first: None,
            open: None,
        };
        package.write_root_rels()?;
        package.write_styles()?;
        package.write_doc_props(created)?;
        Ok(package)
    }

    /// Starts the next sheet: the header of `xl/worksheets/sheetN.xml` up
    /// to `<sheetData>`. The previous sheet must have been ended.
    pub(crate) fn start_sheet(&mut self, name: &str, setup: &SheetSetup<'_>) -> io::Result<()> {
        if self.open.is_some() {
            return Err(misuse("start_sheet while a sheet is open"));
        }
        if setup.placement == Placement::First {
            if self.first.is_some() {
                return Err(misuse("two sheets placed first"));
            }
            self.first = Some(self.sheets.len());
        }
        if let Some(columns) = setup.filter_columns
            && !(1..=MAX_COLUMN).contains(&columns)
        {
            return Err(misuse("filter over no or too many columns"));
        }
        if setup.widths.len() > usize::from(MAX_COLUMN) {
            return Err(misuse("more column widths than columns"));
        }
        let part = self.sheets.len() + 1;
        self.sheets.push(SheetEntry {
            name: name.to_owned(),
            part,
            filter: None,
        });
        self.zip
            .start_file(&self.buf, format!("xl/worksheets/sheet{part}.xml"));
        self.open = Some(OpenSheet {
            row: 0,
            flushed: 0,
            begins_at: self.buf.len(),
            row_digits: Vec::with_capacity(8),
            in_row: false,
            column: 0,
            filter_columns: setup.filter_columns,
        });

        let buf = &mut self.buf;
        buf.extend_from_slice(XML_DECLARATION.as_bytes());
        write!(buf, "<worksheet xmlns=\"{NS_MAIN}\" xmlns:r=\"{NS_REL}\">")?;
        buf.extend_from_slice(b"<sheetViews><sheetView");
        if setup.selected {
            buf.extend_from_slice(b" tabSelected=\"1\"");
        }
        buf.extend_from_slice(b" workbookViewId=\"0\"");
        if setup.freeze_header {
            buf.extend_from_slice(
                b"><pane ySplit=\"1\" topLeftCell=\"A2\" activePane=\"bottomLeft\" state=\"frozen\"/>\
                  <selection pane=\"bottomLeft\" activeCell=\"A2\" sqref=\"A2\"/></sheetView>",
            );
        } else {
            buf.extend_from_slice(b"/>");
        }
        buf.extend_from_slice(b"</sheetViews><sheetFormatPr defaultRowHeight=\"15\"/>");
        if !setup.widths.is_empty() {
            buf.extend_from_slice(b"<cols>");
            for (index, width) in setup.widths.iter().enumerate() {
                let column = index + 1;
                write!(
                    buf,
                    "<col min=\"{column}\" max=\"{column}\" width=\"{}\" customWidth=\"1\"/>",
                    stored_width(*width)
                )?;
            }
            buf.extend_from_slice(b"</cols>");
        }
        buf.extend_from_slice(b"<sheetData>");
        Ok(())
    }

    /// Starts row `row` (1-based) of the open sheet; rows must ascend.
    pub(crate) fn start_row(&mut self, row: u32) -> io::Result<()> {
        let sheet = self
            .open
            .as_mut()
            .ok_or_else(|| misuse("row outside a sheet"))?;
        if sheet.in_row {
            return Err(misuse("start_row inside a row"));
        }
        if row <= sheet.row || row > MAX_ROW {
            return Err(misuse("rows must ascend within 1..=1,048,576"));
        }
        sheet.row = row;
        sheet.in_row = true;
        sheet.column = 0;
        sheet.row_digits.clear();
        write!(sheet.row_digits, "{row}")?;
        self.buf.extend_from_slice(b"<row r=\"");
        self.buf.extend_from_slice(&sheet.row_digits);
        self.buf.extend_from_slice(b"\">");
        Ok(())
    }

    /// Writes a text cell in column `column` (1-based) of the open row, as
    /// an inline string. Columns must ascend.
    pub(crate) fn text_cell(&mut self, column: u16, text: &str, style: Style) -> io::Result<()> {
        self.cell_start(column, style)?;
        self.buf.extend_from_slice(b" t=\"inlineStr\"><is><t");
        if needs_space_preserve(text) {
            self.buf.extend_from_slice(b" xml:space=\"preserve\"");
        }
        self.buf.push(b'>');
        escape_text(&mut self.buf, text);
        self.buf.extend_from_slice(b"</t></is></c>");
        Ok(())
    }

    /// Writes a whole number in column `column` (1-based) of the open row.
    pub(crate) fn number_cell(&mut self, column: u16, value: u64, style: Style) -> io::Result<()> {
        self.cell_start(column, style)?;
        write!(self.buf, "><v>{value}</v></c>")?;
        Ok(())
    }

    /// `<c r="B7"` and the style; checks the cell is in order.
    fn cell_start(&mut self, column: u16, style: Style) -> io::Result<()> {
        let sheet = self
            .open
            .as_mut()
            .ok_or_else(|| misuse("cell outside a sheet"))?;
        if !sheet.in_row {
            return Err(misuse("cell outside a row"));
        }
        if column <= sheet.column || column > MAX_COLUMN {
            return Err(misuse("columns must ascend within A..XFD"));
        }
        sheet.column = column;
        self.buf.extend_from_slice(b"<c r=\"");
        push_column_name(&mut self.buf, column);
        self.buf.extend_from_slice(&sheet.row_digits);
        self.buf.push(b'"');
        if style == Style::Bold {
            self.buf.extend_from_slice(b" s=\"1\"");
        }
        Ok(())
    }

    /// Bytes of XML the open sheet has so far (0 if none is open); past
    /// [`SHEET_PART_LIMIT`] the caller should go on in a new sheet.
    pub(crate) fn sheet_bytes(&self) -> u64 {
        self.open.as_ref().map_or(0, |sheet| {
            sheet.flushed + (self.buf.len() - sheet.begins_at) as u64
        })
    }

    /// Ends the open row, handing the buffer to the compressor when full.
    pub(crate) fn end_row(&mut self) -> io::Result<()> {
        let sheet = self
            .open
            .as_mut()
            .ok_or_else(|| misuse("row outside a sheet"))?;
        if !sheet.in_row {
            return Err(misuse("end_row outside a row"));
        }
        sheet.in_row = false;
        self.buf.extend_from_slice(b"</row>");
        if self.buf.len() >= FLUSH_AT {
            self.flush_buf()?;
        }
        Ok(())
    }

    /// Ends the open sheet: the autofilter (over row 1 to the last row
    /// written, at least row 2), page margins, and the rest of its XML.
    pub(crate) fn end_sheet(&mut self) -> io::Result<()> {
        let sheet = self
            .open
            .take()
            .ok_or_else(|| misuse("end_sheet without a sheet"))?;
        if sheet.in_row {
            return Err(misuse("end_sheet inside a row"));
        }
        self.buf.extend_from_slice(b"</sheetData>");
        if let Some(columns) = sheet.filter_columns {
            let last_row = sheet.row.max(2);
            self.buf.extend_from_slice(b"<autoFilter ref=\"A1:");
            push_column_name(&mut self.buf, columns);
            write!(self.buf, "{last_row}\"/>")?;
            if let Some(entry) = self.sheets.last_mut() {
                entry.filter = Some((columns, last_row));
            }
        }
        self.buf.extend_from_slice(
            b"<pageMargins left=\"0.7\" right=\"0.7\" top=\"0.75\" bottom=\"0.75\" \
              header=\"0.3\" footer=\"0.3\"/></worksheet>",
        );
        self.flush_if_full()
    }

    /// Writes the parts that list the sheets and closes the package,
    /// returning the writer it was written to.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if self.open.is_some() {
            return Err(misuse("finish while a sheet is open"));
        }
        let order = self.tab_order();
        self.write_workbook(&order)?;
        self.write_workbook_rels()?;
        self.write_content_types()?;
        self.zip.finish(&mut self.buf)
    }

    /// Indices into `sheets` in tab order.
    fn tab_order(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.sheets.len());
        order.extend(self.first);
        order.extend((0..self.sheets.len()).filter(|&index| Some(index) != self.first));
        order
    }

    /// Hands the whole buffer over.
    fn flush_buf(&mut self) -> io::Result<()> {
        if let Some(sheet) = self.open.as_mut() {
            sheet.flushed += (self.buf.len() - sheet.begins_at) as u64;
            sheet.begins_at = 0;
        }
        self.zip.write(&mut self.buf)
    }

    /// Begins part `name`: what is appended to the buffer from here on.
    fn begin_part(&mut self, name: &str) {
        self.zip.start_file(&self.buf, name.to_owned());
    }

    fn write_root_rels(&mut self) -> io::Result<()> {
        self.begin_part("_rels/.rels");
        let buf = &mut self.buf;
        buf.extend_from_slice(XML_DECLARATION.as_bytes());
        write!(
            buf,
            "<Relationships xmlns=\"{NS_PKG_REL}\">\
             <Relationship Id=\"rId1\" Type=\"{NS_REL}/officeDocument\" Target=\"xl/workbook.xml\"/>\
             <Relationship Id=\"rId2\" Type=\"{NS_PKG_REL}/metadata/core-properties\" Target=\"docProps/core.xml\"/>\
             <Relationship Id=\"rId3\" Type=\"{NS_REL}/extended-properties\" Target=\"docProps/app.xml\"/>\
             </Relationships>"
        )?;
        self.flush_if_full()
    }

    fn write_styles(&mut self) -> io::Result<()> {
        self.begin_part("xl/styles.xml");
        let buf = &mut self.buf;
        buf.extend_from_slice(XML_DECLARATION.as_bytes());
        write!(
            buf,
            "<styleSheet xmlns=\"{NS_MAIN}\">\
             <fonts count=\"2\">\
             <font><sz val=\"11\"/><name val=\"Calibri\"/><family val=\"2\"/></font>\
             <font><b/><sz val=\"11\"/><name val=\"Calibri\"/><family val=\"2\"/></font>\
             </fonts>\
             <fills count=\"2\"><fill><patternFill patternType=\"none\"/></fill>\
             <fill><patternFill patternType=\"gray125\"/></fill></fills>\
             <borders count=\"1\"><border><left/><right/><top/><bottom/><diagonal/></border></borders>\
             <cellStyleXfs count=\"1\"><xf numFmtId=\"0\" fontId=\"0\" fillId=\"0\" borderId=\"0\"/></cellStyleXfs>\
             <cellXfs count=\"2\">\
             <xf numFmtId=\"0\" fontId=\"0\" fillId=\"0\" borderId=\"0\" xfId=\"0\"/>\
             <xf numFmtId=\"0\" fontId=\"1\" fillId=\"0\" borderId=\"0\" xfId=\"0\" applyFont=\"1\"/>\
             </cellXfs>\
             <cellStyles count=\"1\"><cellStyle name=\"Normal\" xfId=\"0\" builtinId=\"0\"/></cellStyles>\
             <dxfs count=\"0\"/><tableStyles count=\"0\"/>\
             </styleSheet>"
        )?;
        self.flush_if_full()
    }

    fn write_doc_props(&mut self, created: DateTime<Utc>) -> io::Result<()> {
        let stamp = created.format("%Y-%m-%dT%H:%M:%SZ");
        self.begin_part("docProps/core.xml");
        let buf = &mut self.buf;
        buf.extend_from_slice(XML_DECLARATION.as_bytes());
        write!(
            buf,
            "<cp:coreProperties \
             xmlns:cp=\"http://schemas.openxmlformats.org/package/2006/metadata/core-properties\" \
             xmlns:dc=\"http://purl.org/dc/elements/1.1/\" \
             xmlns:dcterms=\"http://purl.org/dc/terms/\" \
             xmlns:dcmitype=\"http://purl.org/dc/dcmitype/\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
             <dc:creator>breakglass</dc:creator>\
             <dcterms:created xsi:type=\"dcterms:W3CDTF\">{stamp}</dcterms:created>\
             <dcterms:modified xsi:type=\"dcterms:W3CDTF\">{stamp}</dcterms:modified>\
             </cp:coreProperties>"
        )?;
        self.begin_part("docProps/app.xml");
        let buf = &mut self.buf;
        buf.extend_from_slice(XML_DECLARATION.as_bytes());
        buf.extend_from_slice(
            b"<Properties \
              xmlns=\"http://schemas.openxmlformats.org/officeDocument/2006/extended-properties\" \
              xmlns:vt=\"http://schemas.openxmlformats.org/officeDocument/2006/docPropsVTypes\">\
              <Application>breakglass</Application><DocSecurity>0</DocSecurity>\
              <ScaleCrop>false</ScaleCrop><LinksUpToDate>false</LinksUpToDate>\
              <SharedDoc>false</SharedDoc><HyperlinksChanged>false</HyperlinksChanged>\
              </Properties>",
        );
        self.flush_if_full()
    }

    fn write_workbook(&mut self, order: &[usize]) -> io::Result<()> {
        self.begin_part("xl/workbook.xml");
        self.buf.extend_from_slice(XML_DECLARATION.as_bytes());
        write!(
            self.buf,
            "<workbook xmlns=\"{NS_MAIN}\" xmlns:r=\"{NS_REL}\">\
             <workbookPr/><bookViews>\
             <workbookView xWindow=\"240\" yWindow=\"15\" windowWidth=\"16095\" windowHeight=\"9660\"/>\
             </bookViews><sheets>"
        )?;
        for (position, &index) in order.iter().enumerate() {
            let sheet = &self.sheets[index];
            self.buf.extend_from_slice(b"<sheet name=\"");
            escape_attribute(&mut self.buf, &sheet.name);
            write!(
                self.buf,
                "\" sheetId=\"{}\" r:id=\"rId{}\"/>",
                position + 1,
                sheet.part
            )?;
            self.flush_if_full()?;
        }
        self.buf.extend_from_slice(b"</sheets>");
        if self.sheets.iter().any(|sheet| sheet.filter.is_some()) {
            self.buf.extend_from_slice(b"<definedNames>");
            for (position, &index) in order.iter().enumerate() {
                let sheet = &self.sheets[index];
                let Some((columns, last_row)) = sheet.filter else {
                    continue;
                };
                // Excel recognises a sheet's autofilter by this hidden name.
                write!(
                    self.buf,
                    "<definedName name=\"_xlnm._FilterDatabase\" localSheetId=\"{position}\" hidden=\"1\">'"
                )?;
                escape_text(&mut self.buf, &sheet.name.replace('\'', "''"));
                self.buf.extend_from_slice(b"'!$A$1:$");
                push_column_name(&mut self.buf, columns);
                write!(self.buf, "${last_row}</definedName>")?;
                self.flush_if_full()?;
            }
            self.buf.extend_from_slice(b"</definedNames>");
        }
        self.buf.extend_from_slice(b"</workbook>");
        self.flush_if_full()
    }

    fn write_workbook_rels(&mut self) -> io::Result<()> {
        self.begin_part("xl/_rels/workbook.xml.rels");
        self.buf.extend_from_slice(XML_DECLARATION.as_bytes());
        write!(self.buf, "<Relationships xmlns=\"{NS_PKG_REL}\">")?;
        for part in 1..=self.sheets.len() {
            write!(
                self.buf,
                "<Relationship Id=\"rId{part}\" Type=\"{NS_REL}/worksheet\" \
                 Target=\"worksheets/sheet{part}.xml\"/>"
            )?;
            self.flush_if_full()?;
        }
        let styles = self.sheets.len() + 1;
        write!(
            self.buf,
            "<Relationship Id=\"rId{styles}\" Type=\"{NS_REL}/styles\" Target=\"styles.xml\"/>\
             </Relationships>"
        )?;
        self.flush_if_full()
    }

    fn write_content_types(&mut self) -> io::Result<()> {
        self.begin_part("[Content_Types].xml");
        self.buf.extend_from_slice(XML_DECLARATION.as_bytes());
        self.buf.extend_from_slice(
            b"<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
              <Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/>\
              <Default Extension=\"xml\" ContentType=\"application/xml\"/>\
              <Override PartName=\"/xl/workbook.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml\"/>\
              <Override PartName=\"/xl/styles.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml\"/>\
              <Override PartName=\"/docProps/core.xml\" ContentType=\"application/vnd.openxmlformats-package.core-properties+xml\"/>\
              <Override PartName=\"/docProps/app.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.extended-properties+xml\"/>",
        );
        for part in 1..=self.sheets.len() {
            write!(
                self.buf,
                "<Override PartName=\"/xl/worksheets/sheet{part}.xml\" ContentType=\"{CT_WORKSHEET}\"/>"
            )?;
            self.flush_if_full()?;
        }
        self.buf.extend_from_slice(b"</Types>");
        self.flush_if_full()
    }

    /// Hands the buffer over once full.
    fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.flush_buf()?;
        }
        Ok(())
    }
}

/// The width Excel stores for a column `width` characters wide: the
/// characters plus cell padding (5 pixels of a 7-pixel digit), in 1/256ths,
/// as Excel (and rust_xlsxwriter) write it.
fn stored_width(width: f64) -> f64 {
    if width <= 0.0 {
        return 0.0;
    }
    if width < 1.0 {
        return ((width * 12.0 + 0.5).trunc() / 7.0 * 256.0).trunc() / 256.0;
    }
    ((width * 7.0 + 5.0) / 7.0 * 256.0).trunc() / 256.0
}

/// Appends the letters of column `column` (1-based: 1 = A, 27 = AA).
fn push_column_name(buf: &mut Vec<u8>, column: u16) {
    let mut letters = [0u8; 3];
    let mut start = letters.len();
    let mut n = u32::from(column);
    while n > 0 && start > 0 {
        let rem = (n - 1) % 26;
        start -= 1;
        letters[start] = b'A' + rem as u8;
        n = (n - 1) / 26;
    }
    buf.extend_from_slice(&letters[start..]);
}

/// Whether readers must be told to keep leading or trailing blanks (what
/// Excel itself checks).
fn needs_space_preserve(text: &str) -> bool {
    let blank = |c: char| matches!(c, ' ' | '\t' | '\n');
    text.starts_with(blank) || text.ends_with(blank)
}

/// Whether `rest` (starting at an `_`) reads `_xHHHH_`, which a reader
/// would decode as an escaped character.
fn is_escape_like(rest: &[u8]) -> bool {
    rest.len() >= 7
        && rest[1] == b'x'
        && rest[2..6].iter().all(u8::is_ascii_hexdigit)
        && rest[6] == b'_'
}

/// Appends `text` as XML character data, escaped as Excel does (see the
/// module documentation).
pub(crate) fn escape_text(buf: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Fast path: nothing to escape. 0xEF starts U+FFFE/U+FFFF in UTF-8.
    if !bytes.iter().any(|&b| {
        matches!(b, b'&' | b'<' | b'>' | b'_' | 0xEF) || (b < 0x20 && b != b'\t' && b != b'\n')
    }) {
        buf.extend_from_slice(bytes);
        return;
    }
    let mut copied = 0;
    for (index, c) in text.char_indices() {
        let replacement: &[u8] = match c {
            '&' => b"&amp;",
            '<' => b"&lt;",
            '>' => b"&gt;",
            '\t' | '\n' => continue,
            '_' if is_escape_like(&bytes[index..]) => {
                // Keep the `_` itself: it follows the inserted `_x005F`.
                buf.extend_from_slice(&bytes[copied..index]);
                buf.extend_from_slice(b"_x005F");
                copied = index;
                continue;
            }
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                buf.extend_from_slice(&bytes[copied..index]);
                push_hex_escape(buf, c as u32);
                copied = index + c.len_utf8();
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[copied..index]);
        buf.extend_from_slice(replacement);
        copied = index + c.len_utf8();
    }
    buf.extend_from_slice(&bytes[copied..]);
}

/// Appends `_xHHHH_` for a character below U+10000.
fn push_hex_escape(buf: &mut Vec<u8>, code: u32) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    buf.extend_from_slice(b"_x");
    for shift in [12, 8, 4, 0] {
        buf.push(HEX[((code >> shift) & 0xF) as usize]);
    }
    buf.push(b'_');
}

/// Appends `text` as an XML attribute value (inside double quotes).
fn escape_attribute(buf: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut copied = 0;
    for (index, &b) in bytes.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\n' => b"&#xA;",
            b'\t' => b"&#x9;",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[copied..index]);
        buf.extend_from_slice(replacement);
        copied = index + 1;
    }
    buf.extend_from_slice(&bytes[copied..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn escaped(text: &str) -> String {
        let mut buf = Vec::new();
        escape_text(&mut buf, text);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn text_is_escaped_as_excel_does() {
        assert_eq!(escaped("plain"), "plain");
        assert_eq!(escaped("a&b<c>d\"e'"), "a&amp;b&lt;c&gt;d\"e'");
        assert_eq!(escaped("tab\there\nline"), "tab\there\nline");
        assert_eq!(escaped("cr\r\n"), "cr_x000D_\n");
        assert_eq!(escaped("ctrl\u{1}\u{1F}"), "ctrl_x0001__x001F_");
        assert_eq!(escaped("nc\u{FFFE}\u{FFFF}"), "nc_xFFFE__xFFFF_");
        assert_eq!(escaped("_x0041_ literal"), "_x005F_x0041_ literal");
        assert_eq!(escaped("a_xBeEf_b"), "a_x005F_xBeEf_b");
        assert_eq!(
            escaped("_x004_ _X0041_ _x00G1_ _x0041"),
            "_x004_ _X0041_ _x00G1_ _x0041"
        );
        assert_eq!(escaped("svc_backup é🔐"), "svc_backup é🔐");
        assert_eq!(escaped("\u{1}_x0001_"), "_x0001__x005F_x0001_");
    }

    #[test]
    fn escaping_matches_rust_xlsxwriter_order() {
        // `_x005F_x0041_` escapes both, so a reader decodes it back exactly.
        assert_eq!(escaped("_x005F_x0041_"), "_x005F_x005F_x005F_x0041_");
    }

    #[test]
    fn attributes_escape_quotes() {
        let mut buf = Vec::new();
        escape_attribute(&mut buf, "a\"b&c<d>'");
        assert_eq!(String::from_utf8(buf).unwrap(), "a&quot;b&amp;c&lt;d&gt;'");
    }

    #[test]
    fn column_names() {
        let name = |column| {
            let mut buf = Vec::new();
            push_column_name(&mut buf, column);
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(name(1), "A");
        assert_eq!(name(12), "L");
        assert_eq!(name(26), "Z");
        assert_eq!(name(27), "AA");
        assert_eq!(name(702), "ZZ");
        assert_eq!(name(703), "AAA");
        assert_eq!(name(MAX_COLUMN), "XFD");
    }

    #[test]
    fn widths_match_excel() {
        assert_eq!(stored_width(14.0), 14.7109375);
        assert_eq!(stored_width(60.0), 60.7109375);
    }

    /// A sheet of one column, its header frozen: the tests' plain tab.
    fn one_column_setup() -> SheetSetup<'static> {
        SheetSetup {
            widths: &[12.0],
            freeze_header: true,
            filter_columns: None,
            selected: false,
            placement: Placement::Next,
        }
    }

    /// Hundreds of small sheets go to the compressor a buffer at a time,
    /// not a hand-over per part; larger sheets span buffers. Every part
    /// reads back whole, in order, and `sheet_bytes` counts the open
    /// sheet's XML only.
    #[test]
    fn small_sheets_share_buffers_and_every_part_is_whole() {
        use std::io::Read;
        let setup = one_column_setup();
        let tail = "</sheetData><pageMargins left=\"0.7\" right=\"0.7\" top=\"0.75\" \
                    bottom=\"0.75\" header=\"0.3\" footer=\"0.3\"/></worksheet>";
        // Sheets 200 and 300 span buffers, the others hold a few rows.
        let rows_of = |sheet: usize| match sheet {
            200 => 20_000,
            300 => 3_000,
            _ => 10 + sheet % 30,
        };
        let mut package = Package::new(io::Cursor::new(Vec::new()), Utc::now()).unwrap();
        let mut written = Vec::new();
        for sheet in 0..400usize {
            package.start_sheet(&format!("s{sheet}"), &setup).unwrap();
            let rows = rows_of(sheet);
            for row in 1..=rows {
                package.start_row(row as u32).unwrap();
                package
                    .text_cell(1, &format!("sheet {sheet} row {row}"), Style::Normal)
                    .unwrap();
                package.end_row().unwrap();
            }
            written.push(package.sheet_bytes() + tail.len() as u64);
            package.end_sheet().unwrap();
        }
        let total: u64 = written.iter().sum();
        let sent = package.zip.sent;
        assert!(
            sent as u64 <= total / FLUSH_AT as u64 + 1,
            "{sent} hand-overs for {total} bytes of sheets"
        );
        assert!(written[200] > 4 * FLUSH_AT as u64 && written[300] > FLUSH_AT as u64);
        let bytes = package.finish().unwrap().into_inner();

        let mut zip = zip::ZipArchive::new(io::Cursor::new(bytes)).unwrap();
        for (sheet, expected) in written.iter().enumerate() {
            let mut part = zip
                .by_name(&format!("xl/worksheets/sheet{}.xml", sheet + 1))
                .unwrap();
            let mut xml = String::new();
            part.read_to_string(&mut xml).unwrap();
            assert_eq!(xml.len() as u64, *expected, "sheet {sheet}");
            assert!(xml.starts_with(XML_DECLARATION), "sheet {sheet}");
            assert!(xml.ends_with(tail), "sheet {sheet}");
            let last = rows_of(sheet);
            assert!(
                xml.contains(&format!("sheet {sheet} row {last}<")),
                "sheet {sheet}"
            );
            assert!(!xml.contains(&format!("sheet {sheet} row {}<", last + 1)));
        }
        for fixed in ["_rels/.rels", "xl/workbook.xml", "[Content_Types].xml"] {
            assert!(zip.by_name(fixed).is_ok(), "{fixed}");
        }
        // Parts in the order they were written.
        let names: Vec<String> = (0..zip.len())
            .map(|index| zip.by_index(index).unwrap().name().unwrap().into_owned())
            .collect();
        let sheets: Vec<&String> = names
            .iter()
            .filter(|name| name.starts_with("xl/worksheets/"))
            .collect();
        assert_eq!(sheets.len(), 400);
        for (index, name) in sheets.iter().enumerate() {
            assert_eq!(**name, format!("xl/worksheets/sheet{}.xml", index + 1));
        }
    }

    /// The `zip` crate patches each part's local header after its data;
    /// under the workbook's [`crate::coalesce::Coalescing`] that happens in
    /// memory, so a thousand small tabs reach the file in a few large
    /// writes and seeks (under a `BufWriter` it was two writes and five
    /// seeks per part), and the workbook still reads back whole.
    #[test]
    fn a_thousand_small_tabs_reach_the_file_in_a_few_writes() {
        use crate::coalesce::tests::Counted;
        use std::io::Read;
        let limit = 256 * 1024;
        let out = crate::coalesce::Coalescing::with_limit(Counted::default(), limit).unwrap();
        let mut package = Package::new(out, Utc::now()).unwrap();
        let setup = one_column_setup();
        for sheet in 0..1_000u32 {
            package.start_sheet(&format!("s{sheet}"), &setup).unwrap();
            package.start_row(1).unwrap();
            package
                .text_cell(1, &format!("tab {sheet}"), Style::Normal)
                .unwrap();
            package.end_row().unwrap();
            package.end_sheet().unwrap();
        }
        let file = package.finish().unwrap().into_inner().unwrap();
        let size = file.inner.get_ref().len();
        let blocks = size.div_ceil(limit);
        assert!(
            file.writes <= 3 * blocks + 10 && file.seeks <= 3 * blocks + 10,
            "{} writes and {} seeks for {size} bytes",
            file.writes,
            file.seeks
        );
        let mut zip = zip::ZipArchive::new(file.inner).unwrap();
        for sheet in [0u32, 499, 999] {
            let mut xml = String::new();
            zip.by_name(&format!("xl/worksheets/sheet{}.xml", sheet + 1))
                .unwrap()
                .read_to_string(&mut xml)
                .unwrap();
            assert!(xml.contains(&format!(">tab {sheet}<")), "sheet {sheet}");
        }
    }

    #[test]
    fn misuse_is_an_error_not_a_broken_file() {
        let mut package = Package::new(io::Cursor::new(Vec::new()), Utc::now()).unwrap();
        assert!(package.start_row(1).is_err(), "row outside a sheet");
        let setup = SheetSetup {
            widths: &[],
            freeze_header: false,
            filter_columns: None,
            selected: false,
            placement: Placement::Next,
        };
        package.start_sheet("s", &setup).unwrap();
        package.start_row(2).unwrap();
        assert!(package.text_cell(2, "x", Style::Normal).is_ok());
        assert!(
            package.text_cell(1, "x", Style::Normal).is_err(),
            "columns ascend"
        );
        package.end_row().unwrap();
        assert!(package.start_row(2).is_err(), "rows ascend");
        assert!(package.start_row(MAX_ROW + 1).is_err());
        package.end_sheet().unwrap();
        package.finish().unwrap();
    }
}
