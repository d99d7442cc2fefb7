"""`sd2_app.ui.light_sessions.one_call_session` on raw direct-call bodies, and the store keeping no one-call
session. Through the running app: tests/reliability/test_reliability_sessions.py
(`test_a_direct_call_naming_no_session_keeps_none_and_copies_no_settings`)."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from sd2_app.ui.light_sessions import ONE_CALL_PREFIX, LightSessionState, LightStateHolder, one_call_session


@pytest.mark.parametrize("raw", [b"{}", b' {"data": [1e400, "a\\u00e9"], "fn_index": 3}  \n',
                                 b'{"data": [], "session_hash": null}'])
def test_a_body_naming_no_session_gets_one_and_keeps_its_other_bytes(raw: bytes) -> None:
    body = json.loads(raw)
    sent = one_call_session(raw, body)
    hashed = json.loads(sent)
    added = hashed.pop("session_hash")
    body.pop("session_hash", None)  # a null one: the parser keeps the last member, the one added
    assert added.startswith(ONE_CALL_PREFIX) and hashed == body
    assert sent.startswith(raw.strip()[:-1].rstrip())  # the client's bytes (1e400 stays 1e400), then the member
    assert one_call_session(raw, body) != sent  # each call its own


@pytest.mark.parametrize("raw", [b'{"data": [], "session_hash": "abc"}', '{"data": []}'.encode("utf-16-le"),
                                 '{"data": []}'.encode("utf-16-be"), '{"data": []}'.encode("utf-32")])
def test_a_body_naming_a_session_or_not_in_utf8_is_left_as_it_came(raw: bytes) -> None:
    assert one_call_session(raw, json.loads(raw)) == raw


def test_the_store_makes_a_one_call_session_for_each_use_and_keeps_none() -> None:
    with gr.Blocks() as demo:
        gr.Textbox()
    holder = LightStateHolder()
    holder.set_blocks(demo)
    first, second = holder[ONE_CALL_PREFIX + "a"], holder[ONE_CALL_PREFIX + "a"]
    kept = holder["visitor"]
    assert isinstance(first, LightSessionState) and first is not second
    assert list(holder.session_data) == ["visitor"] and holder["visitor"] is kept
