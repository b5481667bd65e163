"""Every option of every config group composes and instantiates; the user's words select groups."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF_DIR, FAST, needs_shared
from mmfuse.builder import (
    build_callbacks,
    build_datamodule,
    build_fusion,
    build_loggers,
    build_module,
    is_generative,
)
from mmfuse.encoders.torchvision_image import TorchvisionImageEncoder
from mmfuse.fusion.pooled import AttentionFusion
from mmfuse.module import MMFuseModule
from mmfuse.tasks.itm import ITMTask

GROUPS = ("encoder.image", "encoder.text", "fusion", "data", "task", "trainer", "logger", "callbacks",
          "paths", "hydra", "experiment", "hparams_search", "debug")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_design_group_exists():
    for group in GROUPS:
        assert (CONF_DIR / group).is_dir(), group
    assert not (CONF_DIR / "encoder").exists(), "nested encoder/ would make encoder.image=x replace the block"


@pytest.mark.parametrize("option", options("fusion"))
def test_fusion_options_instantiate(make_cfg, option):
    cfg = make_cfg(f"fusion={option}")
    own = cfg.fusion.get("modality")  # a one-modality control of video or audio: give the run that modality
    dims = {"image": 64, "text": 48} if own in (None, "image", "text") else {own: 64, "text": 48}
    fusion = build_fusion(cfg, dims)
    assert fusion.stage == cfg.fusion.stage


def test_none_means_no_encoder_for_that_modality(make_cfg):
    from mmfuse.builder import configured_modalities

    cfg = make_cfg("encoder.image=none", "encoder.video=tiny_cnn")
    assert OmegaConf.to_container(cfg.encoder.image) == {"_target_": None}
    assert configured_modalities(cfg) == ("video", "text")
    assert configured_modalities(make_cfg("encoder.text=none", "encoder.audio=logmel_cnn")) == ("image", "audio")


@pytest.mark.parametrize("option", [o for o in options("encoder.image") if o != "none"])
def test_image_encoder_options_instantiate(make_cfg, option):
    cfg = make_cfg(f"encoder.image={option}", "encoder.image.pretrained=false")
    enc = instantiate(cfg.encoder.image)
    out = enc(enc.transform(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)))
    assert out.pooled.shape == (2, enc.out_dim)


def bert_base_folder(tmp_path: Path) -> Path:
    """A BERT-base architecture (transformers' BertConfig defaults) with MiniLM's uncased vocabulary."""
    from transformers import BertConfig

    minilm = needs_shared("weights", "all-MiniLM-L6-v2")
    folder = tmp_path / "bert-base-random"
    folder.mkdir()
    BertConfig().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.mark.parametrize("option", [o for o in options("encoder.text") if o != "none"])
def test_text_encoder_options_instantiate(make_cfg, tmp_path, option):
    overrides = [f"encoder.text={option}"]
    if option != "tiny_text":
        overrides += [f"encoder.text.name_or_path={bert_base_folder(tmp_path)}", "encoder.text.pretrained=false"]
    cfg = make_cfg(*overrides)
    enc = instantiate(cfg.encoder.text)
    if not enc.tokenizer.fitted:
        enc.tokenizer.fit(["a red circle"])
    batch = enc.tokenizer(["a red circle", "a blue square to the left"])
    out = enc(batch["input_ids"], batch["attention_mask"])
    assert out.tokens.shape[:2] == batch["input_ids"].shape and out.pooled.shape == (2, enc.out_dim)
    if option == "bert_base":
        assert enc.out_dim == 768 and len(enc.blocks()) == 12


TASK_OF_DATA = {"shapes_vqa": ("task=vqa",), "shapes_dialog": ("task=dialog",),  # data that needs its own task
                "shapes_av": ("task=classification",)}


# options that read a dataset from disk (``root: ???``) are built from fixtures in tests/test_datasets.py
@pytest.mark.parametrize("option", [o for o in options("data") if "root: ???" not in (CONF_DIR / "data" / f"{o}.yaml").read_text()])
def test_data_options_instantiate(make_cfg, option):
    task = TASK_OF_DATA.get(option, ())
    cfg = make_cfg(f"data={option}", *FAST, *task)
    module = build_module(cfg)
    dm = build_datamodule(cfg, module)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    item = dm.modalities[0]  # image, or video for the clip data
    assert batch[item].dtype == torch.float32 and batch["input_ids"].dtype == torch.long
    target = next(k for k in ("label", "target", "answer_ids", "gt_index") if k in batch)
    assert len(batch[target]) == cfg.data.batch_size
    loss, _ = module.task.step(module.model, batch)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("option", options("task"))
def test_task_options_instantiate(make_cfg, option):
    cfg = make_cfg(f"task={option}")
    extra = {}
    if is_generative(cfg.task):  # captioning: the decoder its config selects, over a 32-d memory
        extra["decoder"] = instantiate(cfg.decoder, memory_dim=32)
    task = instantiate(cfg.task, in_dim=32, fusion_stage="mid", image_dim=32, text_dim=32, **extra)
    assert task.monitor.startswith("val/")


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_compose_and_cpu_ones_instantiate(make_cfg, option):
    cfg = make_cfg(f"trainer={option}")
    assert cfg.trainer.default_root_dir == cfg.paths.output_dir
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU here: composed only")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, L.Trainer)
    if option == "ddp_cpu":
        assert trainer.num_devices == 2 and trainer.strategy.process_group_backend == "gloo"


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_instantiate(make_cfg, option):
    cfg = make_cfg(f"logger={option}")
    loggers = build_loggers(cfg)
    assert len(loggers) == len(cfg.logger) >= 1


@pytest.mark.parametrize("group", ["callbacks", "paths", "hydra"])
def test_single_option_groups(make_cfg, group):
    cfg = make_cfg()
    if group == "callbacks":
        task = ITMTask(8, "mid")
        cbs = build_callbacks(cfg, task)
        best, last = [c for c in cbs if isinstance(c, L.pytorch.callbacks.ModelCheckpoint)]
        assert (best.filename, best.monitor, best.mode, best.save_last) == ("best", "val/acc", "max", False)
        assert (last.filename, last.monitor, last.save_top_k) == ("last", None, 1)
    elif group == "paths":
        assert cfg.paths.output_dir == cfg.hydra.runtime.output_dir
    else:
        from omegaconf import OmegaConf

        assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"


@pytest.mark.parametrize("group", ["experiment", "debug", "hparams_search"])
def test_global_option_groups_compose_and_build(make_cfg, group):
    for option in options(group):
        cfg = make_cfg(f"{group}={option}", *FAST)
        assert isinstance(build_module(cfg), MMFuseModule)


def test_seed_model_experiment_is_the_seed_architecture(make_cfg):
    cfg = make_cfg("experiment=seed_model")
    module = build_module(cfg)
    fusion, head = module.model.fusion, module.task.head
    assert type(fusion).__name__ == "AddFusion" and isinstance(fusion.act, torch.nn.Identity)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 1


def test_fusion_zoo_hard_starts_from_the_long_run_of_the_same_fusion_and_seed(make_cfg):
    cfg = make_cfg("experiment=fusion_zoo_hard", "fusion=mul", "seed=3")
    assert cfg.init_from.endswith("zoo/long_mul_seed3/checkpoints/last.ckpt")
    long = make_cfg("experiment=fusion_zoo_long", "fusion=mul", "seed=3", subdir="long")
    assert long.hydra.run.dir.endswith("zoo/long_mul_seed3") and cfg.hydra.run.dir.endswith("zoo/hard_mul_seed3")
    assert cfg.data.curriculum[-1].negatives.relation == cfg.data.curriculum[-1].negatives.binding == 1.0
    assert cfg.data.negatives.relation == cfg.data.negatives.color  # validation: all five types equally


def test_users_command_selects_groups(make_cfg):
    cfg = make_cfg("fusion=attention", "encoder.image=resnet50")
    assert cfg.fusion._target_.endswith("AttentionFusion")
    assert cfg.encoder.image.arch == "resnet50" and "text" in cfg.encoder  # the block is replaced, not lost
    module = build_module(cfg)
    assert isinstance(module.model.fusion, AttentionFusion)
    assert isinstance(module.model.image_encoder, TorchvisionImageEncoder)
    assert module.model.image_encoder.arch == "resnet50" and module.model.image_encoder.out_dim == 2048


def test_misspelt_option_lists_the_available_ones(make_cfg):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        make_cfg("fusion=atention")
    assert "attention" in str(err.value.options) if err.value.options else "attention" in str(err.value)


def test_output_dirs_follow_paths(make_cfg):
    cfg = make_cfg()
    assert cfg.callbacks.model_checkpoint.dirpath == f"{cfg.paths.output_dir}/checkpoints"
    assert cfg.logger.csv.save_dir == cfg.paths.output_dir
