//! Output formatting, in one place: the `-o table|json` choice, JSON
//! printing, and a small table writer (each table declares its columns once).

use std::fmt::{Display, Write as _};

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

/// `-o table|json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Prints `value` as pretty JSON, or as the text `table` renders from it.
pub fn print<T: Serialize + ?Sized>(output: Output, value: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    match output {
        Output::Json => print_json(value),
        Output::Table => {
            print!("{}", table(value));
            Ok(())
        }
    }
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One column: its header, its minimum width and which side it pads.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub header: &'static str,
    pub width: usize,
    pub align: Align,
}

/// A left-aligned column (width 0: not padded, for the last column).
pub const fn left(header: &'static str, width: usize) -> Column {
    Column { header, width, align: Align::Left }
}

pub const fn right(header: &'static str, width: usize) -> Column {
    Column { header, width, align: Align::Right }
}

/// Lines of cells, each padded to its column's width, separated by one
/// space. Cells longer than the width are not cut (the line gets longer).
pub struct Table<'a> {
    columns: &'a [Column],
    indent: &'static str,
    text: String,
}

impl<'a> Table<'a> {
    /// A table whose first line is the column headers.
    pub fn new(columns: &'a [Column]) -> Self {
        let mut t = Self::without_header(columns, "");
        t.line(columns.iter().map(|c| c.header));
        t
    }

    /// Rows only, each line starting with `indent`.
    pub fn without_header(columns: &'a [Column], indent: &'static str) -> Self {
        Table { columns, indent, text: String::new() }
    }

    /// Adds a row: one cell per column, in order.
    pub fn row<const N: usize>(&mut self, cells: [&dyn Display; N]) {
        debug_assert_eq!(N, self.columns.len(), "one cell per column");
        self.line(cells)
    }

    fn line<I>(&mut self, cells: I)
    where
        I: IntoIterator,
        I::Item: Display,
    {
        self.text.push_str(self.indent);
        for (i, (col, cell)) in self.columns.iter().zip(cells).enumerate() {
            if i > 0 {
                self.text.push(' ');
            }
            // Through a String so that every Display type pads the same way.
            let cell = cell.to_string();
            let w = col.width;
            let _ = match col.align {
                Align::Left => write!(self.text, "{cell:<w$}"),
                Align::Right => write!(self.text, "{cell:>w$}"),
            };
        }
        self.text.push('\n');
    }

    /// The rendered lines, each ending with a newline.
    pub fn render(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: &[Column] = &[left("NAME", 6), right("N", 4), left("LAST", 0)];

    #[test]
    fn pads_like_format_strings() {
        let mut t = Table::new(COLS);
        t.row([&"a", &12, &"x y"]);
        t.row([&"longname", &123456, &""]);
        let want = format!(
            "{:<6} {:>4} LAST\n{:<6} {:>4} {}\n{:<6} {:>4} {}\n",
            "NAME", "N", "a", 12, "x y", "longname", 123456, ""
        );
        assert_eq!(t.render(), want);
    }

    #[test]
    fn rows_without_header_are_indented() {
        let cols = [left("A", 3), left("B", 0)];
        let mut t = Table::without_header(&cols, "  ");
        t.row([&"x", &"y"]);
        assert_eq!(t.render(), "  x   y\n");
    }

    #[test]
    fn pads_any_display_type() {
        let cols = [left("IP", 10), right("N", 3)];
        let mut t = Table::without_header(&cols, "");
        t.row([&std::net::Ipv4Addr::new(10, 0, 0, 1), &7]);
        assert_eq!(t.render(), "10.0.0.1     7\n");
    }
}
