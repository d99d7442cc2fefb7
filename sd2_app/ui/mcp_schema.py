"""What the MCP tool list says of image arguments: what this server takes, not Gradio's generic words.

Gradio 6.31's MCP server (gradio/mcp.py, `GradioMCPServer`) gives every file argument the schema
`"format": "Gradio File Input - a http or https url to a file"` (`simplify_filedata_schema`) and ends the
description of each tool that takes one with a sentence sending the agent to an `upload_file_to_gradio` tool
(`_file_data_tool_description`, added in `get_fn_description`); Gradio has no setting for either. This app serves
no such tool and downloads no other site's file (`sd2_app.ui.uploads.REMOTE_FILE_REFUSAL`), so an agent that
followed them failed. `truthful_file_arguments` wraps those two methods of the app's server object, when the
server starts, before any request (`sd2_app.ui.mcp_server.ready_mcp_server`). This is the app's only dependence
on how Gradio's MCP server describes tools.
"""

from __future__ import annotations

from typing import Any

IMAGE_VALUE = "a data URL (data:image/png;base64,...) or the URL of a file uploaded to this server"
IMAGES_SENTENCE = f" Each image is {IMAGE_VALUE}; the server does not download other sites' files."


def truthful_file_arguments(server: Any) -> None:
    """Have Gradio's MCP server `server` describe file arguments as `IMAGE_VALUE` and end the description of a
    tool that takes one with `IMAGES_SENTENCE` instead of Gradio's upload-tool sentence."""
    simplify, describe = server.simplify_filedata_schema, server.get_fn_description
    gradio_sentence = server._file_data_tool_description

    def simplify_filedata_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], list[list[str | int]]]:
        simplified, positions = simplify(schema)
        for position in positions:  # paths below the root's "properties" (gradio/mcp.py, `traverse`)
            node = simplified["properties"]
            for key in position:
                node = node[key]
            node["format"] = IMAGE_VALUE
        return simplified, positions

    def get_fn_description(block_fn: Any, tool_name: str) -> tuple[str, dict[str, str]]:
        description, parameters = describe(block_fn, tool_name)
        return description.replace(gradio_sentence, IMAGES_SENTENCE), parameters

    server.simplify_filedata_schema = simplify_filedata_schema
    server.get_fn_description = get_fn_description

