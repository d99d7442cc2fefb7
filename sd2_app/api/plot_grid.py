"""The X/Y/Z plot's grid images: cells in rows and columns, X labels above, Y labels to the left, a title;
with a Z axis, the grid of each Z value side by side in one image (`plot_grids`).

Text is drawn with a scalable font so small cells still get legible labels: DejaVu Sans when the system has
it, else Pillow's bundled default at the wanted size (Pillow >= 10.1 with FreeType), else Pillow's bitmap
font. Labels wrap at word boundaries to their column's width (A1111 modules/images.py, draw_grid_annotations,
does the same).

A plot that Stop ended keeps its whole grid: each cell that did not run is a grey "not run" cell of the size of
those that ran (`not_run_cell`; A1111's draw_xyz_grid fills one with an empty image of the first cell's size), so
every X, Y and Z label stays over its own column, row and grid. Cropping to the cells that ran instead would
leave holes wherever a checkpoint's cells ran first (`plot.run_order`) and Z grids of different sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from sd2_app.api.plot_cells import PlotCell  # plot_cells.py marks not-run cells with this module's words
    from sd2_app.api.requests import XYZPlotRequest

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
MIN_FONT_PX = 16
SUB_GRID_GAP = 16  # px of white between the Z values' grids in the joined one ("Grid margins" add to it)
NOT_RUN = "not run"  # the words on a cell that Stop left undone (`not_run_cell`)
NOT_RUN_FILL = (204, 204, 204)  # its neutral grey, and the words' darker one
NOT_RUN_TEXT = (96, 96, 96)


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A scalable font of `size` pixels, or Pillow's bitmap font when no TrueType font can be loaded."""
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Lines of `text` no wider than `width` pixels, broken at spaces (a single long word keeps its line)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def not_run_cell(size: tuple[int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """The cell of a plot's grid that did not run (Stop ended the plot first): NOT_RUN_FILL with "not run" in
    its middle, at the size of the cells that ran, so every label stays over its own column and row."""
    cell = Image.new("RGB", size, NOT_RUN_FILL)
    ImageDraw.Draw(cell).text((size[0] / 2, size[1] / 2), NOT_RUN, fill=NOT_RUN_TEXT, font=font, anchor="mm")
    return cell


def _paste_cells(grid: Image.Image, images: Sequence[Image.Image | None], columns: int, cell: tuple[int, int],
                 origin: tuple[int, int], pitch: tuple[int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
                 ) -> None:
    """Paste `images` in row-major order, each scaled to `cell` and centred in its column of `pitch`
    (column width, row height) from `origin`; a None is `not_run_cell`."""
    blank = None
    for index, image in enumerate(images):
        if image is None:
            blank = blank or not_run_cell(cell, font)
            image = blank
        elif image.size != cell:
            image = image.resize(cell, Image.Resampling.LANCZOS)
        row, column = divmod(index, columns)
        left = origin[0] + column * pitch[0] + (pitch[0] - cell[0]) // 2
        grid.paste(image.convert("RGB"), (left, origin[1] + row * pitch[1]))


def draw_grid(
    images: Sequence[Image.Image | None],
    columns: int,
    rows: int,
    x_labels: Sequence[str],
    y_labels: Sequence[str] = (),
    title: str | None = None,
    margin: int = 0,
    cell_size: tuple[int, int] | None = None,
) -> Image.Image:
    """`images` in row-major order (None: a cell that did not run, `not_run_cell`) with labelled margins; `margin`
    px more white between the cells (A1111's "Grid margins (px)"). Each cell is `cell_size` (None: the largest
    image's, 64x64 without any)."""
    present = [image for image in images if image is not None]
    cell_w, cell_h = cell_size or (max((image.width for image in present), default=64),
                                   max((image.height for image in present), default=64))
    font_px = max(MIN_FONT_PX, round(min(cell_w, cell_h) / 16))
    font = load_font(font_px)
    line_h = round(font_px * 1.25)
    pad = max(4, font_px // 2)
    label_w = max(cell_w, 10 * font_px)  # column labels may be wider than a tiny cell
    gap = max(2, font_px // 4) + margin  # white between rows and columns: neighbouring cells read as separate
    column_w = (max(cell_w, label_w) if x_labels else cell_w) + gap
    row_h = cell_h + gap
    x_lines = [wrap(label, font, column_w - pad) for label in x_labels]
    top = max((len(lines) for lines in x_lines), default=0) * line_h + (2 * pad if x_labels else 0)
    y_width = 0
    y_lines: list[list[str]] = []
    if y_labels:
        y_lines = [wrap(label, font, 12 * font_px) for label in y_labels]
        widest = max(font.getlength(line) for lines in y_lines for line in lines)
        y_width = int(widest) + 2 * pad
    title_lines = wrap(title, font, columns * column_w + y_width) if title else []
    title_h = len(title_lines) * line_h + (2 * pad if title else 0)
    width = y_width + columns * column_w
    grid = Image.new("RGB", (width, title_h + top + rows * row_h), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(title_lines):
        draw.text((width / 2, pad + i * line_h), line, fill=TEXT, font=font, anchor="ma")
    for column, lines in enumerate(x_lines):
        centre = y_width + column * column_w + column_w / 2
        for i, line in enumerate(lines):
            draw.text((centre, title_h + pad + i * line_h), line, fill=TEXT, font=font, anchor="ma")
    for row, lines in enumerate(y_lines):
        middle = title_h + top + row * row_h + cell_h / 2 - len(lines) * line_h / 2
        for i, line in enumerate(lines):
            draw.text((y_width - pad, middle + i * line_h), line, fill=TEXT, font=font, anchor="ra")
    _paste_cells(grid, images, columns, (cell_w, cell_h), (y_width, title_h + top), (column_w, row_h), font)
    return grid


def side_by_side(grids: Sequence[Image.Image], gap: int) -> Image.Image:
    """`grids` in one row, top-aligned, `gap` px of white between them."""
    width = sum(grid.width for grid in grids) + gap * (len(grids) - 1)
    joined = Image.new("RGB", (width, max(grid.height for grid in grids)), BACKGROUND)
    left = 0
    for grid in grids:
        joined.paste(grid, (left, 0))
        left += grid.width + gap
    return joined


def plot_grids(plot: XYZPlotRequest, cells: Sequence[PlotCell],
               images: Mapping[int, Image.Image]) -> list[tuple[Image.Image, str]]:
    """The (grid, caption) pairs of a checked plot whose cells `images` holds by index (at least one; a missing one
    did not run, `not_run_cell`):
    one grid per Z value, titled with it; with a Z axis, as A1111 (scripts/xyz_grid.py, draw_xyz_grid), first
    all of them side by side ("Grid"), then each alone only with `include_sub_grids`. Without `draw_legend` the
    grids have no labels or titles; `margin_size` spaces their cells."""
    nx, ny = len(plot.x.values), len(plot.y.values) if plot.y is not None else 1
    legend = plot.draw_legend
    # One cell size for every Z value's grid, that of the cells that ran: a Z value Stop left undone is drawn
    # the same size as the others, its labels over the same columns.
    cell_size = (max(image.width for image in images.values()), max(image.height for image in images.values()))
    grids = []
    for z in range(len(plot.z.values) if plot.z is not None else 1):
        group = [cell for cell in cells if cell.position[2] == z]
        x_labels = [cell.labels[0] for cell in group[:nx]] if legend else []
        y_labels = [cell.labels[1] for cell in group[::nx]] if legend and plot.y is not None else []
        title = group[0].labels[2] if plot.z is not None else None
        grid = draw_grid([images.get(cell.index) for cell in group], nx, ny, x_labels, y_labels,
                         title if legend else None, plot.margin_size, cell_size)
        grids.append((grid, f"Grid: {title}" if title else "Grid"))
    if plot.z is None:
        return grids
    joined = side_by_side([grid for grid, _ in grids], SUB_GRID_GAP + plot.margin_size)
    return [(joined, "Grid"), *(grids if plot.include_sub_grids else [])]
