"""A Gradio Dataframe that fits a phone: the style sheet that keeps some of its columns, at set shares of the
table's width, on narrow screens, so the columns that matter are all in view instead of squeezed or cut at the
box's right edge (the page script adds it with static/app.css, see blocks.py). The same rules, for another range
of widths, keep a wide table's columns at set shares there too.

Gradio 6 draws a Dataframe as a header table (`th[data-heading=i]`, plus a hidden `tbody.sizing-body` it
measures) and a virtual body of flex rows (`[role=gridcell][data-col=i]`), with each column's width in inline
styles; the rules here override those, so the rows follow (their heights are measured as drawn).
"""

from __future__ import annotations

NARROW = "(max-width: 700px)"  # the phone layout's breakpoint in static/app.css
TABLET = "(min-width: 701px) and (max-width: 1023px)"  # wider than a phone, narrower than a small laptop
LAPTOP = "(min-width: 1024px)"


def narrow_table_css(elem_id: str, headers: list[str], shown: dict[str, int], media: str = NARROW) -> str:
    """Rules for the Dataframe `elem_id` (columns `headers`) on the screens `media` names (default: narrow
    ones): only the columns named in `shown`, each at its share (percent) of the table's width; the others are
    left out there. Text too long for its share wraps inside its cell."""
    if set(shown) - set(headers) or sum(shown.values()) != 100:
        raise ValueError(f"shown columns {shown} must be among {headers} and share 100%")
    table = f"#{elem_id}"
    rules = [f"{table} table.header-table, {table} .virtual-body {{ width: 100% !important; table-layout: fixed; }}",
             f"{table} th, {table} .sizing-body td, {table} [role=gridcell] {{ min-width: 0 !important; "
             "max-width: none !important; font-size: var(--text-sm); word-break: normal !important; "
             "overflow-wrap: anywhere; }",
             f"{table} th {{ text-align: left; }}"]
    first = min(headers.index(header) for header in shown)
    for index, header in enumerate(headers):
        th, td = f"{table} th[data-heading='{index}']", f"{table} .sizing-body td:nth-child({index + 1})"
        cell = f"{table} [role=gridcell][data-col='{index}']"
        share = shown.get(header)
        if share is None:
            rules.append(f"{th}, {td}, {cell} {{ display: none !important; }}")
        else:
            rules.append(f"{th}, {td} {{ width: {share}% !important; }} {cell} {{ width: {share}% !important; "
                         f"flex: 0 0 {share}% !important; }}")
    # The first column shown draws no line of its own beside the table's edge (Gradio's first column has none).
    rules.append(f"{table} th[data-heading='{first}'], {table} [role=gridcell][data-col='{first}'] "
                 "{ border-left: none !important; }")
    return f"@media {media} {{\n  " + "\n  ".join(rules) + "\n}\n"
