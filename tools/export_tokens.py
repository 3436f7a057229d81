"""Tokenize a config's dataset with a trained tokenizer into token shards.

    python tools/export_tokens.py CONFIG CHECKPOINT --data {train,val,test}
        --out DIR [--shard-size N] [--batch-size B] [--num-workers W]
        [--seed S] [--signed-ids] [--overwrite] [--cfg-options k=v ...]
        [--trust-checkpoint] [--device cpu]

Writes ``DIR/tokens-000000.tar``, ... and ``DIR/manifest.json`` (format:
:mod:`vistok.datasets.token_shards`; read them with ``TokenShardDataset``).

* Data: ``{data}_dataloader.dataset`` of the config, read by position
  (``dataset[i]``, i = 0 .. len - 1) with its own pipeline as it is, which
  must end with ``PackInputs`` and give one image size. Prefer the val /
  test pipelines (no augmentation) for tokens of the images themselves. A
  random pipeline draws from a per-sample seed (``--seed``, vistok
  datasets), so the tokens do not depend on batching or resuming.
* Weights: those the model validates with (its EMA copy when the config
  has ``model.ema`` with ``use_for_val``, see ``vistok.apis.tokenize``).
* Resume: re-running the same command continues an interrupted export
  after its last complete shard (shards are verified against their sha256;
  a partial shard is a leftover ``.tmp`` and is discarded). A directory
  exported with another model config, checkpoint, dataset or shard size is
  refused; ``--overwrite`` starts it from scratch.
* Batches never cross shards, so a resumed export runs exactly the batches
  an uninterrupted one runs.
* One process (``--num-workers`` loads data in parallel); exporting with
  several ranks is not supported.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, Subset  # noqa: E402

from vistok.apis.tokenize import load_tokenizer, tokenize  # noqa: E402
from vistok.datasets.samplers import SeededIndex, draw_seed  # noqa: E402
from vistok.datasets.token_shards import (  # noqa: E402
    TokenShardWriter,
    index_dtype,
    split_indices,
)
from vistok.registry import DATASETS  # noqa: E402
from vistok.utils.checkpoint import trust_pickled_checkpoints  # noqa: E402
from vistok.utils.fileio import config_sha256, sha256_file  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: plain prints per shard instead
    tqdm = None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint (.pth) or '
                        '.safetensors export of the tokenizer')
    parser.add_argument('--data', required=True,
                        choices=['train', 'val', 'test'],
                        help='tokenize <data>_dataloader.dataset')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--shard-size', type=int, default=1000,
                        help='samples per shard')
    parser.add_argument('--batch-size', type=int, default=32,
                        help='images per forward pass')
    parser.add_argument('--num-workers', type=int, default=0,
                        help='DataLoader workers reading the dataset')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the per-sample draws of a random '
                        'pipeline')
    parser.add_argument('--signed-ids', action='store_true',
                        help='store ids as int32 so that negative ids '
                        '(dropped tokens) fit')
    parser.add_argument('--overwrite', action='store_true',
                        help='delete an existing export in --out first')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow loading the checkpoint as a full pickle; '
                        'this can execute code from the file')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    args = parser.parse_args(argv)
    for name in ('shard_size', 'batch_size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    return args


def build_dataset(cfg: Config, data: str):
    key = f'{data}_dataloader'
    if not cfg.get(key) or 'dataset' not in cfg[key]:
        raise KeyError(f'{cfg.filename} has no {key}.dataset')
    dataset = DATASETS.build(cfg[key]['dataset'])
    if isinstance(dataset, IterableDataset):
        raise TypeError(f'{key}.dataset is a streaming '
                        f'{type(dataset).__name__}: export_tokens reads '
                        f'samples by position and needs a map-style dataset')
    return dataset


def tokenize_shard(model, dataset, start: int, stop: int, args, bar):
    """``(structure, samples)`` of dataset positions ``start .. stop - 1``
    (see :meth:`TokenShardWriter.write_shard`)."""
    positions = [SeededIndex(i, draw_seed(args.seed, 0, i))
                 for i in range(start, stop)]
    loader = DataLoader(Subset(dataset, positions), batch_size=args.batch_size,
                        num_workers=args.num_workers,
                        collate_fn=pseudo_collate)
    structure, samples = None, []
    for batch in loader:
        if 'inputs' not in batch:
            raise KeyError(f'{args.data}_dataloader.dataset gives samples '
                           f'with keys {sorted(batch)}; its pipeline must '
                           f'end with PackInputs')
        structure, levels = split_indices(tokenize(model, batch['inputs']))
        data_samples = batch.get('data_samples') or [None] * len(levels[0])
        for b, data_sample in enumerate(data_samples):
            sample = dict(position=start + len(samples),
                          levels=[level[b].numpy() for level in levels])
            if data_sample is not None:
                sample['sample_idx'] = data_sample.metainfo.get('sample_idx')
                if 'gt_label' in data_sample:
                    sample['gt_label'] = data_sample.gt_label
            samples.append(sample)
        if bar is not None:
            bar.update(len(data_samples))
    return structure, samples


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.trust_checkpoint:
        trust_pickled_checkpoints(True)
    model = load_tokenizer(cfg, args.checkpoint, device=args.device)
    dataset = build_dataset(cfg, args.data)
    codebook_size = int(model.codebook_size)
    identity = dict(
        config_sha256=config_sha256(cfg.model),
        checkpoint_sha256=sha256_file(args.checkpoint),
        dataset_sha256=config_sha256(cfg[f'{args.data}_dataloader'].dataset),
        data=args.data, seed=args.seed, num_samples=len(dataset),
        shard_size=args.shard_size, codebook_size=codebook_size,
        dtype=index_dtype(codebook_size, args.signed_ids).name)
    writer = TokenShardWriter(args.out, identity, overwrite=args.overwrite)
    if writer.next_sample:
        print(f'resuming {args.out} at sample {writer.next_sample}')
    bar = None if tqdm is None else tqdm(
        total=len(dataset), initial=writer.next_sample, unit='img')
    for shard_id, start, stop in writer.pending_shards():
        structure, samples = tokenize_shard(model, dataset, start, stop, args,
                                            bar)
        writer.write_shard(shard_id, structure, samples)
        if bar is None:
            print(f'[{stop}/{len(dataset)}] wrote shard {shard_id}')
    if bar is not None:
        bar.close()
    print(f'{len(dataset)} samples in {writer.num_shards} shards in '
          f'{args.out}')
    return writer.manifest


if __name__ == '__main__':
    main()
