"""PNG info's "Send to text to image" fuzzed (hypothesis): a parameters text of A1111's shape with any of the keys this
app knows and values of any kind (numbers past float range, "nan", sizes that are not sizes, unknown names) fills
text to image or is refused with a message (`gr.Error`); never another exception. The text is what a visitor
pastes, so the send's whole reading runs on it (the event's own function, on a Service that validates only)."""

from __future__ import annotations

import gradio as gr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sd2_app import infotext_keys as keys
from sd2_app.api.checks import Limits

OWN_LINES = ("PROMPT", "NEGATIVE_PROMPT", "PARAMETERS_KEY")  # not "Key: value" settings
KEYS = sorted(value for name, value in vars(keys).items()
              if name.isupper() and isinstance(value, str) and name not in OWN_LINES)
VALUES = st.one_of(
    st.integers(-10**6, 10**20).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["Euler", "DPM++ 2M Karras", "Karras", "Turbo", "64x64", "0x0", "x", "True", "False", "", "-1",
                     "Latent", "SD2 x4", "Use same sampler", "None", "1e400", "nan", "9x", '"a, b"', "9" * 400]),
    st.text(alphabet="abc ,:x0123456789", max_size=10))


@pytest.fixture(scope="module")
def send():
    from sd2_app.api.service import Service
    from sd2_app.ui import build_ui

    demo = build_ui(Service(None, outputs_dir=None, limits=Limits(max_side=512), allowed_repos=()))
    return next(fn for fn in demo.fns.values() if fn.api_name == "png_info_send").fn


@pytest.mark.filterwarnings("ignore::UserWarning")  # the send's toasts (gr.Warning), outside a Gradio event here
def test_fuzzed_parameters_texts_are_sent_or_refused_in_words(send) -> None:
    tally = {"sent": 0, "refused": 0}

    @settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(prompt=st.text(max_size=30), negative=st.one_of(st.none(), st.text(max_size=20)),
           pairs=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=12))
    def run(prompt: str, negative: str | None, pairs: list[tuple[str, str]]) -> None:
        lines = [prompt.replace("\n", " ")]
        if negative is not None:
            lines.append("Negative prompt: " + negative.replace("\n", " "))
        lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
        try:
            assert isinstance(send("\n".join(lines)), tuple)
        except gr.Error as error:
            assert str(error)
            tally["refused"] += 1
            return
        tally["sent"] += 1

    run()
    assert tally["sent"] > 100 and tally["refused"] > 0, tally
