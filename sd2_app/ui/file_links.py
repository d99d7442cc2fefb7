"""Which file a link makes Gradio read: one of this server's files, or another site's (which Gradio would fetch).

Gradio fetches any http(s) URL it is handed: a file value of an event whose `path` is a URL (gradio/
processing_utils.py, `_move_to_cache`: downloaded into its cache) and its file route given a URL (GET
/gradio_api/file=<url>, and the older GET /gradio_api/file/<url>; gradio/routes.py, `file` and
`file_deprecated`: fetched and streamed back). Its test for a URL is a prefix (gradio_client/utils.py,
`is_http_url_like`). `linked_file` is the one place the app decides what a link names; the queue join check
(`sd2_app.ui.uploads.local_file_references`) and the web server's file-route check
(`sd2_app.ui.request_limits.is_remote_file`) both ask it.
"""

from __future__ import annotations

from urllib.parse import unquote

from gradio.route_utils import API_PREFIX

# The file route and its older form: what follows either names the file (a path of this server, or a URL).
FILE_ROUTES = (f"{API_PREFIX}/file=", f"{API_PREFIX}/file/")


def is_url(link: str) -> bool:
    """Whether Gradio would fetch `link` as a URL (its prefix test, here in any letter case)."""
    return link.lower().startswith(("http://", "https://"))


def linked_file(link: str) -> str | None:
    """The path on this server that `link` makes Gradio read, or None where it would fetch another site's file.

    A link through the file route, from any host (`FILE_ROUTES`, anywhere in `link`), names the path after the
    route, URL-decoded: None when that path is itself a URL. Any other URL: None. Anything else is a path and
    comes back unchanged (Gradio checks it as every path: a file in its own folders).
    """
    found = [(at, route) for route in FILE_ROUTES if (at := link.find(route)) >= 0]
    if found:
        at, route = min(found)
        target = unquote(link[at + len(route):])
        return None if is_url(target) else target
    return None if is_url(link) else link
