"""EvalVideo's files: a playable MP4 with the [video] extra (decoded back here), a GIF without it."""
from __future__ import annotations

import sys
from importlib.util import find_spec
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import read_video
from vla_grpo.callbacks import EvalVideo, SplitResult
from vla_grpo.callbacks.video import compose_clip, mp4_encoder, record_episodes, video_prompts
from vla_grpo.envs.toy import ToyReachSuite
from vla_grpo.policies.tiny import TinyVLAPolicy
from vla_grpo.rollout import GroupedRollout

#: x264 at crf 18 in yuv420p (chroma at half resolution) against the composed RGB clip: the mean
#: absolute error per channel, out of 255. Measured 2.0 on this test's clip, 2.4-2.7 on larger clips of
#: three tiles (sharp borders and caption text are the worst case for chroma subsampling).
MP4_MAX_MEAN_ABS_ERROR = 6.0
#: a GIF quantises each frame to a 256-colour palette: the toy tiles' few colours come back exactly
#: (measured 0.0); the bound leaves room for a clip with more colours than the palette
GIF_MAX_MEAN_ABS_ERROR = 2.0
ENCODER_MODULES = {"pyav": "av", "ffmpeg": "imageio_ffmpeg"}


def _module():
    torch.manual_seed(0)
    suite = ToyReachSuite(image_size=16, max_steps=24)
    policy = TinyVLAPolicy(action_dim=2, chunk_size=4, state_dim=6, image_size=16, hidden_dim=64, vocab_size=32)
    return SimpleNamespace(policy=policy, suite=suite, rollout=GroupedRollout(suite, num_envs=4, chunk_size=4))


def _film(tmp_path, loggers=(), **kwargs):
    """EvalVideo after one evaluation at step 3, on the toy suite; returns it and the clip it filmed."""
    module = _module()
    video = EvalVideo(episodes_per_split=2, splits=["train"], dirpath=str(tmp_path), tile_size=32, **kwargs)
    trainer = SimpleNamespace(is_global_zero=True, loggers=list(loggers))
    video.on_split_evaluation_end(trainer, module, SplitResult(step=3, stage="fit", counts={"train": {}}))
    # greedy episodes are deterministic: the same requests give the clip the file must hold
    requests = [("train", p) for p in video_prompts(module.suite, "train", 2)]
    clip = compose_clip(record_episodes(module.rollout, module.policy, module.suite, requests), tile_size=32)
    return video, clip


def _hide(monkeypatch, *modules: str) -> None:
    """Makes ``modules`` not installed for this test: ``sys.modules[name] = None`` makes both
    ``importlib.util.find_spec(name)`` return None and ``import name`` raise ImportError."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _mean_abs_error(decoded: np.ndarray, clip: np.ndarray) -> float:
    return float(np.abs(decoded.astype(np.int16) - clip.astype(np.int16)).mean())


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_eval_video_writes_a_playable_mp4_with_the_video_extra(tmp_path, monkeypatch, encoder):
    if find_spec(ENCODER_MODULES[encoder]) is None:
        pytest.skip(f"the [video] extra's {ENCODER_MODULES[encoder]} is not installed")
    if encoder == "ffmpeg":
        _hide(monkeypatch, "av")  # imageio-ffmpeg's binary encodes, and decodes below
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert mp4_encoder() == encoder
    tb = TensorBoardLogger(tmp_path, name="tb")
    video, clip = _film(tmp_path, loggers=[tb])
    path = tmp_path / "step_000003/train.mp4"
    assert video.written == [path] and path.read_bytes()[4:8] == b"ftyp"  # an MP4 container

    decoded = read_video(path)
    # H.264 in yuv420p needs even sides: an odd side gets one black row/column
    h, w = clip.shape[1] + clip.shape[1] % 2, clip.shape[2] + clip.shape[2] % 2
    assert decoded.shape == (len(clip), h, w, 3)
    assert _mean_abs_error(decoded[:, : clip.shape[1], : clip.shape[2]], clip) <= MP4_MAX_MEAN_ABS_ERROR
    if encoder == "pyav":
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
            assert abs(float(stream.average_rate) - video.fps) < 1e-6

    # TensorBoard still gets the clip as a video (a GIF image summary without moviepy)
    tb.experiment.flush()
    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "eval_video/train" in events.Tags()["images"] + events.Tags().get("tensors", [])


def test_eval_video_writes_a_gif_without_the_video_extra(tmp_path, monkeypatch):
    _hide(monkeypatch, "av", "imageio_ffmpeg")
    assert mp4_encoder() is None
    video, clip = _film(tmp_path)  # format="auto"
    path = tmp_path / "step_000003/train.gif"
    assert video.written == [path] and path.read_bytes()[:6] == b"GIF89a"
    decoded = read_video(path)
    # the GIF writer (Pillow) merges a run of equal frames into one longer frame: the held last frames
    changes = [0] + [t for t in range(1, len(clip)) if not np.array_equal(clip[t], clip[t - 1])]
    assert decoded.shape == (len(changes), *clip.shape[1:])
    assert _mean_abs_error(decoded, clip[changes]) <= GIF_MAX_MEAN_ABS_ERROR
    # asking for MP4 without an encoder is a one-line error naming the extra
    with pytest.raises(ValueError, match=r"\[video\]") as err:
        EvalVideo(format="mp4")
    assert "\n" not in str(err.value)


def test_format_gif_writes_a_gif_even_with_an_encoder(tmp_path):
    video, _ = _film(tmp_path, format="gif")
    assert [p.suffix for p in video.written] == [".gif"]


def test_an_unknown_format_is_one_line_naming_the_knob():
    with pytest.raises(ValueError, match=r"`EvalVideo.format` must be one of \['auto', 'mp4', 'gif'\]"):
        EvalVideo(format="webm")
