"""Benchmark 4 (+ the GPU part of 5): the GPU fast path (``trainer=gpu``), measured flag by flag.

Needs a CUDA GPU (``--device cpu --quick`` runs the same code paths on a CPU with tiny sizes, as a
check). Four parts (``--parts``, in the order given):

``train``: ITM training throughput of ResNet-50 + BERT-base (random weights: architecture and cost are
  what matter; BERT-base is built from ``transformers.BertConfig()`` with MiniLM's uncased vocabulary),
  both trained, ``fusion=mul``, on ``../shared/data/coco_mini`` (JPEG decoding in DataLoader workers),
  adding one flag at a time: fp32 -> bf16-mixed -> channels_last -> cuDNN benchmark + TF32 ->
  pinned memory + persistent workers. Per row: samples/s (pairs; each with one
  in-batch negative), the speed-up over the previous row and over fp32, the fraction of step time
  waiting for data, and the peak GPU memory (``torch.cuda.max_memory_allocated``).
``extract``: feature-extraction throughput of the feature cache (frozen ResNet-50 + BERT-base over the
  COCO sample's images repeated ``--repeat`` times and their captions): images/s and captions/s with
  JPEGs decoded by CPU workers or on the GPU (``torchvision.io.decode_jpeg``), fp32 and bf16.
``memory``: peak GPU memory (max allocated) of the default run (``trainer=gpu``, one epoch) and of the
  real-data run (frozen MobileNetV2 + MiniLM, cached features).
``compile``: the last training row again with ``torch.compile`` (last by default: compiling can take
  minutes, and a lease that ends during it loses only this row), timed from the second epoch on (the
  first holds the compilation; batch size and text length are marked dynamic, so it compiles once).

``--profile`` adds a ``torch.profiler`` trace of 3 steps to every training row, taken before its timed
steps (``profiling.py``): the fraction of those steps' wall time the GPU was busy, and each row's
``ops.md`` (top operators) and ``trace.json`` under the output folder (without ``--train-repeat`` an
epoch has 7 steps at batch 64, and the window holds the first epoch's short last batch).
``--train-repeat N`` trains on the COCO sample repeated N times (400 pairs each: batch 256 needs more
than 2 steps an epoch), and ``--rows`` picks flag rows by number (0 = fp32 ... 4 = all flags).

Each part's table is printed as soon as it is measured, and a row or part that fails prints its error
and the rest goes on (a lease of GPU time is short). ``MMFUSE_SHARED=<folder>`` points at a copy of
the real assets elsewhere; when the MiniLM folder there lacks its weights file, the real-data memory
run uses random MiniLM weights (same architecture, same memory).

    .venv/bin/python experiments/benchmarks/gpu.py                        # on a GPU (about 5 minutes)
    .venv/bin/python experiments/benchmarks/gpu.py --device cpu --quick --workers 2 --compile-backend eager \
        --image resnet18 --text tiny_text                                 # a check of the code paths on a CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import traceback
from pathlib import Path

import torch
from common import (
    COCO,
    MINILM,
    REAL_DATA,
    ROOT,
    add_callback,
    add_timer,
    command_line,
    compose_run,
    machine,
    report,
    table,
    timer_stats,
    use_shared_assets,
)

from mmfuse.builder import build_datamodule, build_module
from mmfuse.data.images import FilePairDataset, ImageFiles
from mmfuse.train import train

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def bert_base_folder(out: Path) -> Path:
    """A BERT-base architecture (transformers' ``BertConfig`` defaults) with MiniLM's uncased vocabulary."""
    from transformers import BertConfig

    folder = out / "bert-base-random"
    folder.mkdir(parents=True, exist_ok=True)
    BertConfig().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (MINILM / name).is_file():
            shutil.copy(MINILM / name, folder / name)
    return folder


def repeated_coco(out: Path, times: int) -> Path:
    """The COCO sample's train split ``times`` times (the same JPEGs under new names and ids, linked),
    its val split as it is, in the official layout."""
    if times == 1:
        return COCO
    root = out / f"coco_mini_x{times}"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train2017").mkdir(exist_ok=True)
    if not (root / "val2017").is_symlink():
        (root / "val2017").symlink_to(COCO / "val2017", target_is_directory=True)
    shutil.copy(COCO / "annotations" / "captions_val2017.json", root / "annotations")
    train = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())
    offset = 1 + max(image["id"] for image in train["images"])
    images, annotations = [], []
    for r in range(times):
        for image in train["images"]:
            name = f"r{r}_{image['file_name']}"
            link = root / "train2017" / name
            if not link.is_symlink():
                link.symlink_to(COCO / "train2017" / image["file_name"])
            images.append({**image, "id": image["id"] + r * offset, "file_name": name})
        annotations += [{**a, "id": len(annotations) + i + 1, "image_id": a["image_id"] + r * offset}
                        for i, a in enumerate(train["annotations"])]
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps({**train, "images": images,
                                                                              "annotations": annotations}))
    return root


def peak_mb() -> int | str:
    return round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else "n/a (no GPU)"


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def models(out: Path, args: argparse.Namespace) -> tuple[str, ...]:
    """Random-weight encoders: ``--image`` (a torchvision CNN config) and ``--text`` (bert_base, or tiny_text)."""
    image = (f"encoder.image={args.image}", "encoder.image.pretrained=false")
    if args.text == "bert_base":
        text = ("encoder.text=bert_base", f"encoder.text.name_or_path={bert_base_folder(out)}",
                "encoder.text.pretrained=false")
    else:
        text = (f"encoder.text={args.text}",)
    return (*image, *text, "data.image_size=64" if args.quick else "data.image_size=224")


def train_part(out: Path, args: argparse.Namespace, base: tuple[str, ...], compile_row: bool = False) -> str:
    """The flag rows (``compile_row=False``), or the last row alone: all flags + torch.compile (its own
    part, run last, since compiling may take minutes; "vs previous" then compares with the flag rows)."""
    data = ("data=coco_captions", f"data.root={repeated_coco(out, args.train_repeat)}", f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
            "fusion=mul", "task.retrieval=false", "test=false", "callbacks.progress_bar=null", "callbacks.lr_monitor=null",
            "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null",
            "++trainer.enable_checkpointing=false",
            "trainer.check_val_every_n_epoch=1000", "trainer.num_sanity_val_steps=0", f"trainer.max_epochs={args.epochs}", *(("data.num_train=16", "data.num_val=8") if args.quick else ()))
    fp32 = ("trainer.precision=32-true", "trainer.channels_last=false", "trainer.benchmark=false",
            "trainer.float32_matmul_precision=highest", "data.pin_memory=false", "data.persistent_workers=false")
    compile_arg = "trainer.compile=true" if args.compile_backend == "inductor" else \
        f"trainer.compile={{backend:{args.compile_backend}}}"
    steps = [
        ("fp32", ()),
        ("+ bf16-mixed", ("trainer.precision=bf16-mixed",)),
        ("+ channels_last", ("trainer.channels_last=true",)),
        ("+ cuDNN benchmark + TF32", ("trainer.benchmark=true", "trainer.float32_matmul_precision=high")),
        ("+ pinned memory + persistent workers", ("data.pin_memory=true", "data.persistent_workers=true")),
        ("+ torch.compile", (compile_arg,)),
    ]
    rows, flags = [], list(fp32)
    first, previous = args.rates.get("first"), args.rates.get("previous")
    for i, (name, change) in enumerate(steps):
        flags += change
        if compile_row != (i == len(steps) - 1) or (not compile_row and i not in args.rows):
            continue
        run_dir = out / f"train-{i}"
        cfg = compose_run(run_dir, (*base, *data, *flags))
        add_timer(cfg, run_dir / "timer.json")
        if args.profile:  # 3 steps before the timed ones
            add_callback(cfg, "step_profiler", "profiling.StepProfiler", folder=str(run_dir / "profile"),
                         start=max(args.batch_skip - 4, 1))
        reset_peak()
        try:
            results = train(cfg)
            # compiled: the first epoch holds the compilation
            stats = timer_stats(run_dir / "timer.json", skip=args.batch_skip, min_epoch=1 if compile_row and args.epochs > 1 else 0)
        except Exception as e:  # noqa: BLE001 - one flag failing must not lose the other rows
            rows.append([name, "-", "-", "-", "-", "-", "-", peak_mb(), f"failed: {type(e).__name__}: {str(e)[:200]}"])
            print(rows[-1], flush=True)
            continue
        rate = args.batch / stats["step_s"]
        first = first or (rate if i == 0 else None)
        profiled = run_dir / "profile" / "summary.json"
        busy = json.loads(profiled.read_text())["device_busy_fraction"] if profiled.is_file() else None
        rows.append([name, round(rate, 1), f"{rate / previous:.2f}x" if previous else "-",
                     f"{rate / first:.2f}x" if first else "-",
                     f"{stats['wait_fraction']:.2f}", "-" if busy is None else f"{busy:.2f}", stats["steps"],
                     peak_mb(), results["status"]])
        previous = args.rates["previous"] = rate
        if first:
            args.rates.setdefault("first", first)
        print(rows[-1], flush=True)
    return table(["flags (cumulative)", "samples/s", "vs previous", "vs fp32", "waiting for data",
                  "GPU busy (profiled)", "steps timed", "peak GPU MiB", "status"], rows)


def extract_part(out: Path, args: argparse.Namespace, base: tuple[str, ...]) -> str:
    import lightning as L

    files = sorted((COCO / "train2017").glob("*.jpg")) + sorted((COCO / "val2017").glob("*.jpg"))
    files = files[:8] if args.quick else files
    captions = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())["annotations"]
    texts = sorted({a["caption"].strip() for a in captions})[: 40 if args.quick else None]
    rows = []
    regimes = [(p, d) for p in ("32-true", "bf16-mixed") for d in ("cpu", "auto")]
    for i, (precision, decode) in enumerate([("32-true", "auto"), *regimes]):  # the first: a warm-up, not shown
        run_dir = out / f"extract-{i}-{precision}-{decode}"
        cfg = compose_run(run_dir, (*base, "encoder.image.freeze=true", "encoder.text.freeze=true",
                                    f"cache.decode={decode}", f"cache.num_workers={args.workers}",
                                    f"cache.batch_size={args.extract_batch}", f"trainer.precision={precision}"))
        module = build_module(cfg)
        datamodule = build_datamodule(cfg, module)
        store = ImageFiles([f for _ in range(args.repeat) for f in files])
        tokenizer = module.model.text_encoder.tokenizer
        if not getattr(tokenizer, "fitted", True):
            tokenizer.fit(texts)  # a vocabulary built from data (tiny_text)
        tokens = tokenizer([t + f" ({r})" for r in range(args.repeat) for t in texts])
        n = min(len(store), len(tokens["input_ids"]))
        dataset = FilePairDataset(store, tokens, torch.arange(n), torch.arange(n), {}, module.model.image_encoder.transform)
        trainer = L.Trainer(accelerator=args.device if args.device == "cpu" else "gpu", devices=1, precision=precision,
                            logger=False, enable_checkpointing=False)
        reset_peak()
        datamodule.feature_cache.wrap({"extract": dataset}, trainer=trainer)
        report_ = datamodule.feature_cache.report["extract"]
        image = json.loads((Path(report_["image"]["path"]) / "manifest.json").read_text())
        text = json.loads((Path(report_["text"]["path"]) / "manifest.json").read_text())
        if i == 0:
            shutil.rmtree(run_dir / "cache", ignore_errors=True)
            continue
        rows.append([precision, image.get("decoded_on", "cpu"), len(store), round(len(store) / image["encode_seconds"], 1),
                     len(tokens["input_ids"]), round(len(tokens["input_ids"]) / text["encode_seconds"], 1),
                     peak_mb()])
        shutil.rmtree(run_dir / "cache", ignore_errors=True)
    return table(["precision", "JPEG decoded on", "images", "images/s", "captions", "captions/s", "peak GPU MiB"], rows)


def memory_part(out: Path, args: argparse.Namespace, on_device: tuple[str, ...]) -> str:
    quick = ("debug=fast",) if args.quick else ()
    has_weights = any((MINILM / f).is_file() for f in ("model.safetensors", "pytorch_model.bin"))
    real = (*REAL_DATA, *(() if has_weights else ("encoder.text.pretrained=false",)))
    runs = [
        ("default run (shapes, tiny encoders), 1 epoch", (*on_device, "trainer.max_epochs=1", *quick)),
        ("real data (frozen MobileNetV2 + MiniLM" + ("" if has_weights else " with random weights") + ", cached)",
         (*on_device, *real, "test=false",
                                                              *(("data.num_train=16", "data.num_val=8") if args.quick else ()))),
    ]
    rows = []
    for i, (name, overrides) in enumerate(runs):
        if ("default", "real")[i] not in args.memory_runs.split(","):
            continue
        reset_peak()
        try:
            results = train(compose_run(out / f"memory-{i}", (*overrides, "callbacks.progress_bar=null")))
            rows.append([name, peak_mb(), results["wall_time_s"], results["status"]])
        except Exception as e:  # noqa: BLE001
            rows.append([name, peak_mb(), "-", f"failed: {type(e).__name__}: {str(e)[:200]}"])
        print(rows[-1], flush=True)
    return table(["run", "peak GPU MiB (max allocated)", "wall s", "status"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a check that the script runs)")
    parser.add_argument("--parts", default="train,extract,memory,compile")
    parser.add_argument("--image", default="resnet50", help="image encoder config (random weights)")
    parser.add_argument("--text", default="bert_base", help="text encoder: bert_base (random weights) or tiny_text")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 64; 8 with --quick)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of each training measurement (default 6, of 7 steps each; 1 with --quick)")
    parser.add_argument("--batch-skip", type=int, default=None, help="warm-up steps left out (default 8; 2 with --quick)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--train-repeat", type=int, default=1, help="train on the COCO sample repeated this many times")
    parser.add_argument("--rows", default="0,1,2,3,4", help="which flag rows the train part measures (0 = fp32 ... 4 = all)")
    parser.add_argument("--profile", action="store_true", help="a profiler trace of 3 steps per training row")
    parser.add_argument("--repeat", type=int, default=8, help="times the COCO sample is repeated for extraction")
    parser.add_argument("--extract-batch", type=int, default=256)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--memory-runs", default="default,real", help="which runs the memory part measures")
    parser.add_argument("--sharing-strategy", default=None, help="torch.multiprocessing sharing strategy (file_system)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "gpu")
    args = parser.parse_args()
    args.batch = args.batch or (8 if args.quick else 64)
    args.rows = {int(r) for r in args.rows.split(",")}
    args.rates = {}  # the train part's first and last rates, for the compile part's comparisons
    args.epochs = args.epochs or (1 if args.quick else 6)
    args.batch_skip = args.batch_skip if args.batch_skip is not None else (2 if args.quick else 8)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: no CUDA device here. Run it where a GPU is lent, or check it with --device cpu --quick")
    if args.sharing_strategy:
        torch.multiprocessing.set_sharing_strategy(args.sharing_strategy)
    use_shared_assets()
    started = machine()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    on_device = ("trainer=gpu",) + (("trainer.accelerator=cpu",) if args.device == "cpu" else ())
    base = (*on_device, *models(out, args))
    encoders = f"{args.image} + {args.text} (random weights)"
    titles = {"train": f"Training throughput, {encoders}, ITM on coco_mini"
                       f"{f' x{args.train_repeat}' if args.train_repeat > 1 else ''} (batch {args.batch}, {args.workers} workers):",
              "extract": f"Feature extraction (building the cache), frozen {encoders}:",
              "memory": "Peak GPU memory:"}
    titles["compile"] = titles["train"].replace("Training throughput", "Training throughput with torch.compile")
    measure = {"train": lambda: train_part(out, args, base), "extract": lambda: extract_part(out, args, base),
               "memory": lambda: memory_part(out, args, on_device),
               "compile": lambda: train_part(out, args, base, compile_row=True)}
    sections = []
    for part in args.parts.split(","):
        try:
            body = measure[part]()
        except Exception:  # noqa: BLE001 - the other parts still run
            body = "failed:\n\n```\n" + traceback.format_exc()[-3000:] + "```"
        sections += [titles[part], "", body, ""]
        print(f"\n{titles[part]}\n\n{body}\n", flush=True)
    report("GPU path (trainer=gpu)", command_line(), "\n".join(sections), started)


if __name__ == "__main__":
    main()
