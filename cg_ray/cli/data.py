"""The data commands: synth, prepare, pack, bench, text, scenes."""

from __future__ import annotations

import json

from cg_ray.cli.common import command, progress_option, write_json
from cg_ray.errors import UserError


def register(sub) -> None:
    _synth(sub)
    _prepare(sub)
    _pack(sub)
    _bench(sub)
    _text(sub)
    _scenes(sub)


def _synth(sub) -> None:
    p = command(
        sub,
        "synth",
        "write a synthetic world of real encoded media",
        """
Write a synthetic world in the CityGuessr68k release layout (labels_list.csv, train/ and val/
with <City>/<video_id>/<n>.jpg) or as mp4 files with a labels CSV, plus per-clip soft scene
labels. Continent, country, state and city each leave their own visual mark; deterministic.""",
        """
cg-ray synth world/
cg-ray synth world_mp4/ --format mp4 --cities 6 --clips-per-city 10""",
        synth,
    )
    p.add_argument("out", help="folder (or s3:// URI) to write the world to")
    p.add_argument("--cities", type=int, default=12, help="cities (spread over 6 continents)")
    p.add_argument("--clips-per-city", type=int, default=30, help="clips of each city")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", default="64x48", help="frame size WxH")
    p.add_argument(
        "--format", choices=["frames", "mp4"], default="frames", help="JPEG frame folders or mp4 files"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the world")


def synth(args) -> None:
    from cg_ray.data.synthetic import make_world

    width, _, height = args.size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise UserError(f"--size '{args.size}' must look like WxH, e.g. 64x48")
    summary = make_world(
        args.out,
        cities=args.cities,
        clips_per_city=args.clips_per_city,
        frames=args.frames,
        size=(int(width), int(height)),
        fmt=args.format,
        seed=args.seed,
    )
    print(json.dumps(summary))


def _prepare(sub) -> None:
    p = command(
        sub,
        "prepare",
        "dataset layout -> manifest.parquet + taxonomy.json",
        """
Turn a dataset layout into DEST/manifest.parquet (one row per clip), DEST/taxonomy.json and
DEST/prepare_report.json (clips per split and label, skipped clips with their reasons).""",
        """
cg-ray prepare world/ --out data/
cg-ray prepare s3://raw/cityguessr68k --out s3://work/cg68k
cg-ray prepare msls/ --out msls_data/ --layout msls
cg-ray prepare videos.csv --out mine/ --layout videos""",
        prepare,
    )
    p.add_argument("source", help="the dataset: a folder, s3:// URI, or (videos) a CSV")
    p.add_argument(
        "--layout",
        default="cityguessr",
        help="cityguessr (the release or the official code's label files), msls, "
        "or videos (CSV path,city,state,country,continent[,split])",
    )
    p.add_argument("--out", required=True, metavar="DEST", help="where the prepared dataset goes")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of each city's clips for val, where the layout has no split",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    p.add_argument(
        "--min-frames", type=int, default=None, help="skip shorter clips (default: 15 for msls, 1 otherwise)"
    )
    p.add_argument(
        "--hierarchy",
        metavar="CSV",
        help="msls: city,state,country,continent rows (default: the 30-city hierarchy shipped with cg_ray)",
    )


def prepare(args) -> None:
    from cg_ray.data.layouts import prepare

    report = prepare(
        args.layout,
        args.source,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        min_frames=args.min_frames,
        hierarchy=args.hierarchy,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "skipped"}))
    if report.get("skipped"):
        print(f"skipped {len(report['skipped'])} clips: see {args.out}/prepare_report.json")


def _pack(sub) -> None:
    p = command(
        sub,
        "pack",
        "raw clips -> parquet shards of T JPEG frames at SxS (Ray Data)",
        """
Read each clip once, decode the T frames it samples, resize them to S x S and store them as
JPEG in DEST/shards/frames{T}_size{S}/; training and evaluation then read the shards. An
interrupted pack resumes where it stopped.""",
        """
cg-ray pack data/ --frames 16 --size 224
cg-ray pack s3://work/cg68k --frames 16 --size 224""",
        pack,
    )
    p.add_argument("dest", help="a prepared dataset (folder or s3:// URI)")
    p.add_argument("--frames", type=int, default=16, help="frames stored per clip (T)")
    p.add_argument("--size", type=int, default=224, help="stored frame size S (S x S)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored frames")
    p.add_argument("--clips-per-shard", type=int, default=120, help="clips per parquet shard")
    p.add_argument("--min-frames", type=int, default=1, help="skip clips with fewer frames")
    p.add_argument("--seed", type=int, default=0, help="order of clips over the shards")
    p.add_argument(
        "--sampling",
        choices=["uniform", "official"],
        default="uniform",
        help="which frames are stored: evenly spaced (serves data.sampling uniform, "
        "random, bidirectional; random and bidirectional need --frames 2T) or "
        "the official picks, every 5th from the first (data.sampling=official)",
    )
    progress_option(p)


def pack(args) -> None:
    from cg_ray.data.pack import PackOptions, pack

    report = pack(
        args.dest,
        PackOptions(
            num_frames=args.frames,
            image_size=args.size,
            quality=args.quality,
            clips_per_shard=args.clips_per_shard,
            min_frames=args.min_frames,
            seed=args.seed,
            sampling=args.sampling,
        ),
    )
    print(json.dumps({k: v for k, v in report.items() if k not in ("skipped", "shards")}))
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} clips: see {report['dest']}/pack_report.json")


def _bench(sub) -> None:
    p = command(
        sub,
        "bench",
        "measure a part of the system",
        """
Measure a part of the system and print its figures as JSON.""",
        """
cg-ray bench data data/ --clips 2400""",
    )
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    b = command(
        targets,
        "data",
        "clips/s delivered after iter_torch_batches, peak memory",
        """
Stream clips of a prepared (ideally packed) dataset the way training reads them, and print
clips/s, CPU-seconds per clip and peak memory.""",
        """
cg-ray bench data data/ --clips 2400 --metrics-out bench.json""",
        bench_data,
    )
    b.add_argument("dest", help="a prepared (ideally packed) dataset")
    b.add_argument("--clips", type=int, default=512, help="clips to stream in all")
    b.add_argument("--split", default="train", help="split to stream")
    b.add_argument("--frames", type=int, default=16, help="frames per clip (T)")
    b.add_argument("--size", type=int, default=224, help="frame size S")
    b.add_argument("--batch-size", type=int, default=12, help="clips per batch")
    b.add_argument("--metrics-out", metavar="PATH", help="also write the figures as JSON here")


def bench_data(args) -> None:
    from cg_ray.data.bench import bench_data

    result = bench_data(args.dest, args.clips, args.split, args.frames, args.size, args.batch_size)
    write_json(args.metrics_out, result)
    print(json.dumps(result))


def _text(sub) -> None:
    p = command(
        sub,
        "text",
        "open_clip text features of every label name (TLA targets)",
        """
Embed every label name of every level with an open_clip text encoder and store
DEST/text_features.parquet (level, label, vector): the TLA targets.""",
        """
cg-ray text data/
cg-ray text data/ --pretrained openai
cg-ray text data/ --pretrained /models/open_clip_vit_b32.pt""",
        text,
    )
    p.add_argument("dest", help="a prepared dataset")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    p.add_argument(
        "--pretrained", default=None, help="open_clip tag (openai) or weights file (default: random weights)"
    )
    p.add_argument("--template", default="a street in {}.", help="text around each label name")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")


def text(args) -> None:
    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.labels.text import encode_label_names, save_text_features

    taxonomy = PreparedDataset(args.dest).taxonomy
    features = encode_label_names(taxonomy, args.model, args.pretrained, args.template, args.seed)
    print(save_text_features(args.dest, features, taxonomy))


def _scenes(sub) -> None:
    p = command(
        sub,
        "scenes",
        "Places365 soft scene labels per clip (Ray Data batch "
        "inference) -> manifest scene_soft, scene_majority",
        """
Label every sampled frame with a Places365 CNN and store each clip's soft scene label (fraction
of its frames in each of the 16 level-2 categories) in the manifest. Resumable.""",
        """
cg-ray scenes data/ --checkpoint resnet18_places365.pth.tar --hierarchy places365_hierarchy.csv""",
        scenes,
    )
    p.add_argument("dest", help="a prepared dataset (folder or s3:// URI)")
    p.add_argument("--checkpoint", required=True, help="Places365 CNN (CSAIL .pth.tar)")
    p.add_argument(
        "--hierarchy",
        required=True,
        metavar="SHEET.csv",
        help="the Places365 scene hierarchy sheet, exported as CSV",
    )
    p.add_argument("--arch", help="torchvision architecture (default: the checkpoint's arch, else resnet18)")
    p.add_argument("--categories", help="class names in output order (default: Places365)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (evenly spaced)")
    p.add_argument("--size", type=int, default=224, help="frames go to the CNN at SIZE x SIZE")
    p.add_argument("--batch-size", type=int, default=8, help="clips per inference batch")
    p.add_argument("--actors", type=int, help="inference actors (default: one per GPU, else one per CPU)")
    p.add_argument(
        "--flush-every",
        type=int,
        default=256,
        help="clips per partial results file (what a resumed run skips)",
    )
    progress_option(p)


def scenes(args) -> None:
    from cg_ray.labels.scenes import SceneOptions, label_scenes

    report = label_scenes(
        args.dest,
        SceneOptions(
            checkpoint=args.checkpoint,
            hierarchy=args.hierarchy,
            arch=args.arch,
            categories=args.categories,
            num_frames=args.frames,
            image_size=args.size,
            batch_size=args.batch_size,
            actors=args.actors,
            flush_every=args.flush_every,
        ),
    )
    print(
        json.dumps(
            {k: report[k] for k in ("clips", "labelled", "resumed", "skipped", "frames_per_s", "arch")}
        )
    )
    if report["skipped"]:
        print(f"skipped {report['skipped']} clips: see {args.dest}/scenes_report.json")
