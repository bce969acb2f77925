//! Tables for people, for the client commands and `bench` alike: plain
//! aligned columns from `comfy-table`, so that no command pads its cells
//! by hand.

use comfy_table::{CellAlignment, Table};

/// A column: its name, and whether its cells (and name) stand to the
/// right, as numbers do.
pub type Column = (&'static str, CellAlignment);

/// An empty table with these columns, drawn like plain aligned text: no
/// borders or rules (a script greps or cuts it, and `--json` is there for
/// parsing), one space between columns and none before the first.
fn new(columns: &[Column]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(columns.iter().map(|(name, _)| *name));
    for (column, (_, align)) in table.column_iter_mut().zip(columns) {
        column.set_padding((0, 1));
        column.set_cell_alignment(*align);
    }
    table
}

/// The text of a table with these columns and rows (a row a cell per
/// column), without the spaces its last column pads with.
pub fn of(columns: &[Column], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = new(columns);
    for row in rows {
        table.add_row(row);
    }
    table.trim_fmt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use CellAlignment::{Left, Right};

    /// A table reads like hand-aligned columns: names left, numbers
    /// right, under their header, one space apart, no borders.
    #[test]
    fn a_table_is_plain_aligned_columns() {
        let rows = [["mail", "12", "0"], ["a-longer-name", "3", "1500"]];
        assert_eq!(
            of(
                &[("name", Left), ("ready", Right), ("lag", Right)],
                rows.map(|r| r.map(String::from).to_vec())
            ),
            "name          ready  lag\n\
             mail             12    0\n\
             a-longer-name     3 1500"
        );
    }
}
