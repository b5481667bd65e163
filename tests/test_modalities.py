"""Any set of modalities: the model, the builder's checks, late fusion over N, groups in classification."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST
from mmfuse.builder import build_fusion, build_module, configured_modalities
from mmfuse.errors import MMFuseError
from mmfuse.fusion.base import Fusion
from mmfuse.fusion.late import LateFusion
from mmfuse.fusion.pooled import MulFusion
from mmfuse.model import FusionModel
from mmfuse.tasks.classification import ClassificationTask
from mmfuse.tasks.heads import LateHeads, SimilarityHead
from mmfuse.types import EncoderOutput, LateOutput


class Passthrough(torch.nn.Module):
    """An 'encoder' whose input is already the pooled vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.fully_frozen = False

    def forward(self, x, mask=None):
        return EncoderOutput(x * self.scale, (x * self.scale)[:, None], torch.ones(len(x), 1, dtype=torch.bool))


def test_the_model_runs_the_configured_encoders_in_modality_order():
    dims = {"video": 3, "audio": 2, "text": 4}
    fusion = MulFusion(dims, dim=5, activation="identity")
    model = FusionModel(None, Passthrough(4), fusion, video_encoder=Passthrough(3), audio_encoder=Passthrough(2))
    assert model.modalities == ("video", "audio", "text")
    assert list(model.encoders) == ["video", "audio", "text"]
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.randn(2, 3, generator=g), "audio": torch.randn(2, 2, generator=g),
             "audio_mask": torch.ones(2, 2, dtype=torch.bool)}
    batch["text"] = torch.randn(2, 4, generator=g)
    model.encode_text = lambda b: model.text_encoder(b["text"])
    z = model(batch)
    expected = (fusion.proj_video(batch["video"]) * fusion.proj_audio(batch["audio"]) * fusion.proj_text(batch["text"]))
    torch.testing.assert_close(z, expected)
    assert model.encoded_samples == {"video": 2, "audio": 2, "text": 0}  # text ran through the stand-in
    assert [n for n, _ in model.named_children()][:3] == ["video_encoder", "audio_encoder", "text_encoder"]
    with pytest.raises(MMFuseError, match="matching and retrieval pair text with one other modality"):
        model.item_modality  # noqa: B018


def test_a_batch_without_a_configured_encoders_input_is_one_line():
    model = FusionModel(None, Passthrough(4), MulFusion({"video": 3, "text": 4}), video_encoder=Passthrough(3))
    assert model.item_modality == "video"
    with pytest.raises(MMFuseError, match=r"the batch has no 'video' \(its keys: \['image'\]\)"):
        model.encode("video", {"image": torch.zeros(1, 3)})
    with pytest.raises(MMFuseError, match="the model has no audio encoder"):
        model.encode("audio", {})


def test_configured_modalities_follow_the_encoder_groups(make_cfg):
    assert configured_modalities(make_cfg()) == ("image", "text")
    assert configured_modalities(make_cfg("data=shapes_video")) == ("video", "text")
    assert configured_modalities(make_cfg("encoder.image=none", "encoder.audio=logmel_cnn")) == ("audio", "text")


def test_an_encoder_the_data_cannot_feed_is_one_line(make_cfg):
    """data=shapes has images and text; a configured video encoder names itself and the fix."""
    from mmfuse.builder import build_datamodule

    cfg = make_cfg("encoder.video=tiny_cnn", "data.num_train=8", "data.num_val=8", "data.num_test=8")
    module = build_module(cfg)
    with pytest.raises(MMFuseError, match=r"^data=ShapesDataModule provides image, text, but encoder.video is "
                                          r"configured and the data has no video: set encoder.video=none"):
        build_datamodule(cfg, module)


def test_late_fusion_over_three_modalities_and_its_heads():
    dims = {"image": 3, "audio": 2, "text": 4}
    torch.manual_seed(0)
    late = LateFusion(dims, dim=6)
    g = torch.Generator().manual_seed(1)
    inputs = {m: EncoderOutput(torch.randn(2, d, generator=g), torch.zeros(2, 1, d), torch.ones(2, 1, dtype=torch.bool))
              for m, d in dims.items()}
    out = late(inputs)
    assert isinstance(out, LateOutput) and list(out) == ["image", "audio", "text"]
    torch.testing.assert_close(out.audio, late.proj_audio(inputs["audio"].pooled))
    sim = SimilarityHead(init_scale=2.0)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=-1)  # noqa: E731
    expected = 2.0 * (cos(out.image, out.text) + cos(out.audio, out.text)) / 2 - 1.0
    torch.testing.assert_close(sim(out).squeeze(-1), expected)
    heads = LateHeads("linear", 6, 3, modalities=tuple(dims))
    assert [n for n, _ in heads.named_children()] == ["image", "audio", "text"]
    torch.testing.assert_close(heads(out), heads.image(out.image) + heads.audio(out.audio) + heads.text(out.text))


def test_classification_accuracy_per_group_is_exact():
    task = ClassificationTask(4, "mid", num_classes=3, groups=("unimodal", "bimodal", "trimodal"),
                              group_key="interaction_type")
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    batch = {"target": torch.tensor([0, 1, 0, 0, 2, 2]), "interaction_type": torch.tensor([0, 0, 1, 1, 2, 2])}
    task.update("val", {"logits": logits, "loss": torch.zeros(6)}, batch)
    m = {k: float(v) for k, v in task.compute("val").items()}
    assert m["val/acc_unimodal"] == 1.0 and m["val/acc_bimodal"] == 0.5 and m["val/acc_trimodal"] == 0.5
    assert m["val/acc"] == pytest.approx(4 / 6)
    task.reset("val")
    with pytest.raises(MMFuseError, match="but the batches have no 'interaction_type'"):
        task.update("val", {"logits": logits, "loss": torch.zeros(6)}, {"target": batch["target"]})


def test_lr_mult_and_parts_name_every_encoder(make_cfg):
    module = build_module(make_cfg("data=shapes_video", "+lr_mult.video_encoder=0.5"))
    assert list(module.parts()) == ["video_encoder", "text_encoder", "fusion", "head"]
    groups = {g["name"]: g["lr"] for g in module.param_groups()}
    assert groups["video_encoder"] == pytest.approx(0.5e-3) and groups["text_encoder"] == pytest.approx(1e-4)


class OldMatchFusion(Fusion):
    """README's worked example as written before fusions took N modalities (two inputs)."""

    stage = "mid"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 128) -> None:
        super().__init__(image_dim, text_dim)
        self.out_dim = 2 * dim
        self.proj_image = torch.nn.Linear(image_dim, dim)
        self.proj_text = torch.nn.Linear(text_dim, dim)

    def forward(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        a = torch.tanh(self.proj_image(image.pooled))
        b = torch.tanh(self.proj_text(text.pooled))
        return torch.cat([a * b, (a - b).abs()], dim=-1)


def test_a_two_input_fusion_of_ones_own_still_builds_and_runs_for_image_text():
    cfg = OmegaConf.create({"fusion": {"_target_": f"{__name__}.OldMatchFusion", "stage": "mid", "dim": 3}})
    fusion = build_fusion(cfg, {"image": 4, "text": 5})
    assert list(fusion.state_dict()) == ["proj_image.weight", "proj_image.bias", "proj_text.weight", "proj_text.bias"]
    assert (fusion.image_dim, fusion.text_dim, fusion.dims) == (4, 5, {"image": 4, "text": 5})
    g = torch.Generator().manual_seed(0)
    image = EncoderOutput(torch.randn(2, 4, generator=g), torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool))
    text = EncoderOutput(torch.randn(2, 5, generator=g), torch.zeros(2, 1, 5), torch.ones(2, 1, dtype=torch.bool))
    a, b = torch.tanh(fusion.proj_image(image.pooled)), torch.tanh(fusion.proj_text(text.pooled))
    torch.testing.assert_close(fusion({"image": image, "text": text}), torch.cat([a * b, (a - b).abs()], -1))
    with pytest.raises(MMFuseError, match=r"takes \(image_dim, text_dim\): image \+ text only, and this run has "
                                          r"video, text; write it as Fusion\(dims\)"):
        build_fusion(cfg, {"video": 4, "text": 5})


def test_a_checkpoint_written_before_n_modalities_loads_and_gives_its_metrics(make_cfg, tmp_path):
    """``tests/assets/checkpoint_6fb9b69``: a tiny default-model run (tiny_cnn + tiny_text + mul, widths 8)
    trained by the two-input code of 6fb9b69; eval.py today rebuilds it from the checkpoint alone (its
    saved config has no encoder.video / encoder.audio) and reproduces the validation metrics it logged."""
    import json
    import shutil
    from pathlib import Path

    from mmfuse.evaluate import evaluate

    asset = Path(__file__).parent / "assets" / "checkpoint_6fb9b69"
    for name in ("last.ckpt", "last.ckpt.sha256.json"):
        shutil.copy(asset / name, tmp_path / name)
    expected = json.loads((asset / "expected.json").read_text())["metrics"]
    cfg = make_cfg(f"ckpt_path={tmp_path / 'last.ckpt'}", f"data.cache_dir={tmp_path / 'cache'}",
                   subdir="eval", config_name="eval")
    got = evaluate(cfg)
    assert got["status"] == "completed"
    assert {k: v for k, v in got["metrics"].items() if k in expected} == pytest.approx(expected, abs=1e-6)
    # and today's metrics on top: Youden's J per negative type
    assert got["metrics"]["val/j_color"] == pytest.approx(expected["val/acc_positive"] + expected["val/acc_color"] - 1)


def test_a_video_run_trains_and_eval_reproduces_it_from_the_checkpoint(make_cfg):
    """``train.py data=shapes_video`` shrunk, then ``eval.py ckpt_path=...``: the video encoder (its frame
    encoder built without reading weights, the checkpoint has them) gives the same validation metrics."""
    from pathlib import Path

    from mmfuse.evaluate import evaluate
    from mmfuse.train import train

    cfg = make_cfg("data=shapes_video", *FAST, "data.num_train=32", "data.num_val=32", "data.num_test=0",
                   "data.batch_size=16", "checkpoint_frozen_encoders=false", subdir="train")
    trained = train(cfg)
    assert trained["status"] == "completed" and trained["encoded_samples"]["video"] > 0
    assert trained["params"]["video_encoder"] > 0 and "image_encoder" not in trained["params"]
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    evaluated = evaluate(make_cfg(f"ckpt_path={ckpt}", subdir="eval", config_name="eval"))
    val = {k: v for k, v in trained["metrics"].items() if k.startswith("val/")}
    assert "val/j_order" in val and "val/acc_direction" in val
    assert {k: v for k, v in evaluated["metrics"].items() if k.startswith("val/")} == pytest.approx(val, abs=1e-6)


def test_video_text_retrieval_ranks_clips_for_captions(make_cfg):
    """task=retrieval on shapes_video: the dual encoder matches captions with clips (batches carry the
    clip index as image_id, the item index retrieval reads)."""
    from mmfuse.train import train

    cfg = make_cfg("data=shapes_video", "task=retrieval", "fusion=late", *FAST, "data.num_train=32",
                   "data.num_val=20", "data.num_test=0", "data.batch_size=16")
    m = train(cfg)["metrics"]
    assert m["val/rsum"] == pytest.approx(sum(m[f"val/{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    assert m["val/i2t_r10"] >= m["val/i2t_r5"] >= m["val/i2t_r1"] and m["val/t2i_r10"] > 0


def test_embedded_clips_refuse_another_frame_count_from_the_encoder(make_cfg):
    from mmfuse.builder import build_datamodule

    cfg = make_cfg("data=shapes_video", "encoder.video.frames=12", "encoder.video.temporal=transformer",
                   "data.num_train=4", "data.num_val=4", "data.num_test=0")
    dm = build_datamodule(cfg, build_module(cfg))
    with pytest.raises(MMFuseError, match=r"^encoder.video.frames=12 but data=shapes_video clips have data.frames=8"):
        dm.setup("fit")


def test_a_context_other_than_text_takes_the_y_role_in_every_pair():
    """fusion=film over image + video + text with fusion.context=video: video modulates each other modality
    (y = the context), even where it comes after it (image) or before it (text) in MODALITIES order."""
    cfg = OmegaConf.create({"fusion": {"_target_": "mmfuse.fusion.pooled.FiLMFusion", "stage": "mid", "dim": 4,
                                       "context": "video"}})
    fusion = build_fusion(cfg, {"image": 3, "video": 5, "text": 2})
    assert {m: (f.x, f.y) for m, f in fusion.pairs.items()} == {"image": ("image", "video"), "text": ("text", "video")}
    assert fusion.pairs["text"].gamma.in_features == 5 and fusion.pairs["text"].proj_text.in_features == 2


def test_a_two_input_fusion_survives_deepcopy():
    import copy

    cfg = OmegaConf.create({"fusion": {"_target_": f"{__name__}.OldMatchFusion", "stage": "mid", "dim": 3}})
    fusion = build_fusion(cfg, {"image": 4, "text": 5})
    twin = copy.deepcopy(fusion)
    for p in twin.parameters():
        torch.nn.init.zeros_(p)
    x = {m: EncoderOutput(torch.ones(1, d), torch.zeros(1, 1, d), torch.ones(1, 1, dtype=torch.bool))
         for m, d in (("image", 4), ("text", 5))}
    assert torch.equal(twin(x), torch.zeros(1, 6)) and not torch.equal(fusion(x), torch.zeros(1, 6))


def test_late_output_keeps_its_two_input_form():
    u, v = torch.ones(2, 3), torch.zeros(2, 3)
    out = LateOutput(u, v)
    assert list(out) == ["image", "text"] and out.image is u and out["text"] is v
    assert list(LateOutput(video=u, text=v)) == ["video", "text"]


def test_a_cache_file_of_garbage_bytes_is_made_again_and_a_planted_object_refused(tmp_path):
    import os

    from mmfuse.data.atomic import atomic_torch_save, load_plain

    garbage = tmp_path / "g.pt"
    garbage.write_bytes(b"not a torch file at all")
    assert load_plain(garbage) is None  # damaged: made again (it used to be refused as code)
    good = tmp_path / "ok.pt"
    atomic_torch_save({"x": torch.arange(3), "names": ["a"]}, good)
    assert load_plain(good)["names"] == ["a"]

    class Planted:
        def __reduce__(self):
            return (os.getcwd, ())

    planted = tmp_path / "p.pt"
    torch.save({"x": Planted()}, planted)
    with pytest.raises(MMFuseError, match=r"holds Python objects other than tensors"):
        load_plain(planted)


def test_classification_accuracy_under_two_groupings_at_once():
    task = ClassificationTask(4, "mid", num_classes=2, groups={"kind": ("a", "b"), "rule": ("r0", "r1", "r2")})
    logits = torch.tensor([[5.0, 0], [0, 5.0], [5.0, 0], [5.0, 0]])
    batch = {"target": torch.tensor([0, 0, 0, 1]), "kind": torch.tensor([0, 0, 1, 1]),
             "rule": torch.tensor([0, 1, 2, 2])}
    task.update("val", {"logits": logits, "loss": torch.zeros(4)}, batch)
    m = {k: float(v) for k, v in task.compute("val").items()}
    assert (m["val/acc_a"], m["val/acc_b"]) == (0.5, 0.5)
    assert (m["val/acc_r0"], m["val/acc_r1"], m["val/acc_r2"]) == (1.0, 0.0, 0.5)
