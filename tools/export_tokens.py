"""Tokenize a config's dataset with a trained tokenizer into token shards.

    python tools/export_tokens.py CONFIG CHECKPOINT --data {train,val,test}
        --out DIR [--format {wds,seit,compact}] [--model {order0,context}]
        [--keep-shards] [--shard-size N] [--batch-size B]
        [--num-workers W] [--seed S] [--signed-ids] [--flat-sequence]
        [--llm-ids] [--hflip-pairs] [--overwrite]
        [--cfg-options k=v ...] [--trust-checkpoint] [--device cpu]
        [--launcher {auto,none,pytorch,slurm}]
    torchrun --nproc_per_node N tools/export_tokens.py CONFIG CHECKPOINT ...
    bash tools/dist_export_tokens.sh CONFIG CHECKPOINT N [args ...]

Formats (:mod:`vistok.datasets.token_convert`):

* ``wds`` (default): ``DIR/tokens-000000.tar``, ... and
  ``DIR/manifest.json`` (:mod:`vistok.datasets.token_shards`; read them with
  ``TokenShardDataset``).
* ``seit``: ``DIR/<data>-token.data.bin.gz``,
  ``DIR/<data>-token.index.npy.gz``, with labels ``DIR/<data>-label.txt``,
  and ``DIR/codebook.ckpt`` (the quantizer's code vectors, when it has one
  codebook) (the SeiT files,
  :mod:`vistok.datasets.seit_format`; ``SeiTTokenDataset``). The SeiT format
  stores codes 0..509 and flat codes only.
* ``compact``: ``DIR/<data>-tokens.vtok``, entropy-coded with ``--model``
  (:mod:`vistok.datasets.compact_format`; ``CompactTokenDataset``).

  Both export wds shards to ``DIR/shards`` first (resumable as below), then
  convert them losslessly (checked by re-reading) and record the result in
  ``DIR/export.json`` (identity, files and their sha256, ``tokens_sha256``);
  the shards are deleted unless ``--keep-shards``. Re-running a finished
  export verifies the files and stops.

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
* ``--signed-ids`` (negative ids) works with ``wds`` only.
* ``--flat-sequence`` (``wds`` only): each sample is stored as one 1-D id
  sequence in the quantizer's token order (its ``to_sequence``, e.g. a
  hierarchical quantizer's ``token_order``; a single index tensor is
  flattened row-major), in the quantizer's joint vocabulary; the manifest
  records ``token_order`` and the per-level layout ``sequence``, which
  ``vistok.models.utils.token_ids.from_token_sequence`` needs to undo it.
* ``--llm-ids`` (``wds`` only): every code id is mapped to its LLM
  vocabulary id through the quantizer's ``selected_llm_indices`` (UniCode:
  a codebook taken from an LLM's embedding table; the official exporter
  ``src/eval/vae/generate_img_token_ids.py`` maps the same way); the
  manifest records ``id_map`` (the table's size and sha256) and
  ``codebook_size`` becomes the bound of the stored ids. Refused when the
  quantizer has no such table. With ``--flat-sequence``: the ids of a
  UniCode MLLM's ``<vistok>`` text.
* ``--hflip-pairs``: every sample twice, export position ``2i`` the
  tokens of dataset sample ``i`` as its pipeline gives it and ``2i + 1``
  those of its horizontal flip (the image flipped after the whole
  pipeline, with the same per-sample draw), so the export holds ``2N``
  samples. TiTok's generator recipe tokenises a fixed centre crop with a
  random flip online (``configs/_base_/recipes/titok_generator.py``): with
  a frozen tokenizer these are all the token sequences it can see. The
  flag is part of the export's identity (its ``dataset_sha256``).
* Several processes (``torchrun``, ``tools/dist_export_tokens.sh``, or
  ``--launcher slurm`` under srun; ``--launcher auto``, the default, joins
  a process group when ``WORLD_SIZE`` > 1: gloo on CPU, NCCL with
  ``--device cuda``, each rank on its local GPU): the export is the one a
  single process writes, byte for byte. Shard ``k`` holds samples ``k *
  shard-size ..`` whichever rank writes it; rank 0 verifies the directory
  and hands the pending shards out round-robin; each rank writes its shards
  with a shard record each (``tokens-XXXXXX.tar.json``, their sha256);
  after a barrier rank 0 folds the records into the one manifest (and
  deletes them), then converts to ``--format seit / compact``. Resume keeps
  every shard that matches its sha256 (in the manifest or its record),
  whichever rank wrote it and with any number of processes; a killed rank
  only loses the shard it was writing. Every rank returns None but rank 0.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch.distributed as torch_dist  # noqa: E402
from mmengine.config import Config, ConfigDict, DictAction  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from torch.utils.data import (  # noqa: E402
    DataLoader,
    Dataset,
    IterableDataset,
    Subset,
)

from vistok.apis.tokenize import load_tokenizer, tokenize  # noqa: E402
from vistok.datasets.samplers import SeededIndex, draw_seed  # noqa: E402
from vistok.datasets.seit_format import (  # noqa: E402
    NUM_STORABLE_CODES,
    write_seit_codebook,
)
from vistok.datasets.token_convert import (  # noqa: E402
    CODEBOOK_NAME,
    FORMATS,
    convert_tokens,
    output_files,
)
from vistok.datasets.token_shards import (  # noqa: E402
    TokenShardWriter,
    index_dtype,
    split_indices,
)
from vistok.models.utils.token_ids import (  # noqa: E402
    LLM_TABLE_NAME,
    codes_to_llm_ids,
    llm_id_table,
    sequence_order,
    table_sha256,
    to_token_sequence,
)
from vistok.registry import DATASETS  # noqa: E402
from vistok.utils.checkpoint import (  # noqa: E402
    trust_pickled_checkpoints,
    write_text_atomic,
)
from vistok.utils.dist import (  # noqa: E402
    finalize_dist,
    get_rank,
    init_dist,
    is_distributed,
)
from vistok.utils.fileio import config_sha256, sha256_file  # noqa: E402
from vistok.utils.progress import progress  # noqa: E402

#: where --format seit / compact keep the wds shards they convert
SHARD_DIR = 'shards'
RECORD_NAME = 'export.json'
#: seconds a rank waits at a collective: the others may still tokenise their
#: shards, or rank 0 convert a whole dataset (a killed rank ends the job
#: through torchrun / srun, not through this timeout)
DIST_TIMEOUT_S = 24 * 3600


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint (.pth) or '
                        '.safetensors export of the tokenizer')
    parser.add_argument('--data', required=True,
                        choices=['train', 'val', 'test'],
                        help='tokenize <data>_dataloader.dataset')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--format', default='wds', choices=FORMATS,
                        help='storage format (see the module docstring)')
    parser.add_argument('--model', default='order0',
                        choices=['order0', 'context'],
                        help='entropy model of --format compact')
    parser.add_argument('--keep-shards', action='store_true',
                        help='keep DIR/shards after converting them to '
                        '--format seit / compact')
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
    parser.add_argument('--flat-sequence', action='store_true',
                        help='store each sample as one 1-D id sequence in '
                        'the quantizer\'s token order (recorded in the '
                        'manifest)')
    parser.add_argument('--llm-ids', action='store_true',
                        help='store LLM vocabulary ids: codes mapped through '
                        f'the quantizer\'s {LLM_TABLE_NAME} (UniCode)')
    parser.add_argument('--hflip-pairs', action='store_true',
                        help='export each sample and its horizontal flip '
                        '(positions 2i, 2i + 1; see the module docstring)')
    parser.add_argument('--overwrite', action='store_true',
                        help='delete an existing export in --out first')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow loading the checkpoint as a full pickle; '
                        'this can execute code from the file')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda '
                        '(several processes: cuda = each rank\'s local GPU)')
    parser.add_argument('--launcher', default='auto',
                        choices=['auto', 'none', 'pytorch', 'slurm'],
                        help='several processes: auto = pytorch when '
                        'WORLD_SIZE > 1 (torchrun), else none')
    args = parser.parse_args(argv)
    if args.signed_ids and args.format != 'wds':
        parser.error('--signed-ids needs --format wds (the seit and compact '
                     'formats store non-negative codes)')
    for flag in ('flat_sequence', 'llm_ids'):
        if getattr(args, flag) and args.format != 'wds':
            parser.error(f'--{flag.replace("_", "-")} needs --format wds '
                         f'(only its manifest records the token order and '
                         f'the id map)')
    if args.llm_ids and args.signed_ids:
        parser.error('--llm-ids and --signed-ids exclude each other: '
                     'dropped (negative) ids have no LLM id')
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


class HFlipPairs(Dataset):
    """``dataset`` with every sample followed by its horizontal flip:
    position ``2i`` is ``dataset[i]``, ``2i + 1`` the same sample with its
    ``inputs`` (channel-first, width last) flipped along the width. Both
    read sample ``i`` under the draw of position ``i`` (``draw_seed(seed,
    0, i)``), so a random pipeline gives the pair the same image."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return 2 * len(self.dataset)

    def __getitem__(self, idx):
        source = int(idx) // 2
        sample = self.dataset[SeededIndex(source,
                                          draw_seed(self.seed, 0, source))]
        if int(idx) % 2:
            if 'inputs' not in sample:
                raise KeyError(f'--hflip-pairs flips the samples\' inputs; '
                               f'the dataset gives keys {sorted(sample)}: '
                               f'its pipeline must end with PackInputs')
            sample = dict(sample, inputs=sample['inputs'].flip(-1))
        return sample


def stored_ids(model, indices, args, llm_table):
    """``(structure, levels, layout)`` of a batch of ``indices`` as stored:
    per-level grids or, with ``--flat-sequence``, one sequence per sample
    (``layout`` its index layout, else None); LLM ids with ``--llm-ids``
    (``llm_table`` is the quantizer's joint LLM id table)."""
    quantizer = getattr(model, 'quantizer', None)
    if not args.flat_sequence:
        if llm_table is not None:
            indices = codes_to_llm_ids(indices, quantizer, llm_table)
        return (*split_indices(indices), None)
    sequence, layout = to_token_sequence(quantizer, indices)
    if llm_table is not None:
        sequence = llm_table[sequence]
    return 'tensor', [sequence], layout


def tokenize_shard(model, dataset, start: int, stop: int, args, bar,
                   llm_table=None):
    """``(structure, samples, layout)`` of dataset positions ``start ..
    stop - 1`` (see :meth:`TokenShardWriter.write_shard`; ``layout`` is
    the index layout of flat sequences, else None)."""
    positions = [SeededIndex(i, draw_seed(args.seed, 0, i))
                 for i in range(start, stop)]
    loader = DataLoader(Subset(dataset, positions), batch_size=args.batch_size,
                        num_workers=args.num_workers,
                        collate_fn=pseudo_collate)
    structure, samples, layout = None, [], None
    for batch in loader:
        if 'inputs' not in batch:
            raise KeyError(f'{args.data}_dataloader.dataset gives samples '
                           f'with keys {sorted(batch)}; its pipeline must '
                           f'end with PackInputs')
        structure, levels, layout = stored_ids(
            model, tokenize(model, batch['inputs']), args, llm_table)
        data_samples = batch.get('data_samples') or [None] * len(levels[0])
        for b, data_sample in enumerate(data_samples):
            sample = dict(position=start + len(samples),
                          levels=[level[b].numpy() for level in levels])
            if data_sample is not None:
                sample['sample_idx'] = data_sample.metainfo.get('sample_idx')
                if 'gt_label' in data_sample:
                    sample['gt_label'] = data_sample.gt_label
            samples.append(sample)
        bar.update(len(data_samples))
    return structure, samples, layout


def setup_dist(args) -> bool:
    """Join the process group of ``--launcher`` (``auto``: pytorch when
    torchrun set ``WORLD_SIZE`` > 1); True when this call created it (and
    :func:`main` should destroy it), False when there is none or the caller
    made it."""
    launcher = args.launcher
    if launcher == 'auto':
        several = int(os.environ.get('WORLD_SIZE', '1')) > 1
        launcher = 'pytorch' if several else 'none'
    if launcher == 'none' or torch_dist.is_initialized():
        return False
    init_dist(launcher, backend='gloo' if args.device == 'cpu' else None,
              timeout=DIST_TIMEOUT_S)
    return True


def broadcast_from_rank0(obj):
    """``obj`` of rank 0 on every rank (as it is without several
    processes)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def export_shards(model, dataset, identity: dict, out: str, args,
                  llm_table=None):
    """Export (or resume exporting) the wds shards of ``dataset`` into
    ``out``; returns the manifest (None on ranks other than 0).

    Several processes: rank 0 verifies ``out`` and hands the pending shards
    out round-robin; each writes its shards and their shard records; after
    a barrier rank 0 folds the records into the manifest."""
    shared, rank = is_distributed(), get_rank()
    world_size = torch_dist.get_world_size() if shared else 1
    state = None
    if rank == 0:
        writer = TokenShardWriter(out, identity, overwrite=args.overwrite,
                                  shared=shared)
        state = (writer.manifest, writer.recorded)
    manifest, recorded = broadcast_from_rank0(state)
    if rank != 0:
        differ = [k for k in identity if manifest.get(k) != identity[k]]
        if differ:
            raise ValueError(f'rank {rank} exports another {differ} than '
                             f'rank 0: every rank must run the same command')
        writer = TokenShardWriter.attach(out, manifest, recorded)
    pending = list(writer.pending_shards())
    done = len(dataset) - sum(stop - start for _, start, stop in pending)
    if done and rank == 0:
        print(f'resuming {out}: {done} of {len(dataset)} samples kept')
    mine = pending[rank::world_size]
    desc = f'export (rank {rank}/{world_size})' if shared else 'export'
    bar = progress(total=sum(stop - start for _, start, stop in mine)
                   + (0 if shared else done), initial=0 if shared else done,
                   unit='img', desc=desc)
    for shard_id, start, stop in mine:
        structure, samples, layout = tokenize_shard(
            model, dataset, start, stop, args, bar, llm_table)
        writer.write_shard(shard_id, structure, samples, sequence=layout)
    bar.close()
    if shared:
        torch_dist.barrier()
    if rank != 0:
        return None
    manifest = writer.finish()
    print(f'{len(dataset)} samples in {writer.num_shards} shards in {out}')
    return manifest


def seit_codebook(model):
    """The ``(K, D)`` code vectors of the tokenizer's quantizer (what SeiT's
    ``codebook.ckpt`` holds), or None when it has no single codebook."""
    quantizer = getattr(model, 'quantizer', None)
    if not hasattr(quantizer, 'code_vectors'):
        print('the tokenizer\'s quantizer has no code_vectors(): no '
              f'{CODEBOOK_NAME} written')
        return None
    return quantizer.code_vectors().detach().cpu()


def llm_ids_of(model, args):
    """``(table, id_map)`` of ``--llm-ids``: the quantizer's joint LLM id
    table (:func:`~vistok.models.utils.token_ids.llm_id_table`) and the
    manifest's ``id_map``; ``(None, None)`` without the flag."""
    if not args.llm_ids:
        return None, None
    quantizer = getattr(model, 'quantizer', None)
    if quantizer is None:
        raise ValueError(f'--llm-ids: the {type(model).__name__} has no '
                         f'quantizer to read {LLM_TABLE_NAME} from')
    try:
        table = llm_id_table(quantizer)
    except ValueError as err:
        raise ValueError(f'--llm-ids maps codes through the quantizer\'s '
                         f'{LLM_TABLE_NAME}, which this tokenizer cannot '
                         f'give: {err}') from None
    return table, dict(
        kind='llm', source=LLM_TABLE_NAME, num_codes=table.numel(),
        sha256=table_sha256(table))


def converted_name(args) -> str:
    if args.format == 'seit':
        return f'{args.data}-token.data.bin.gz'
    return f'{args.data}-tokens.vtok'


def finished_export(args, identity: dict):
    """The record of a finished ``--format seit / compact`` export in
    ``--out`` when it matches this one and its files are intact; None when
    there is none (or it is damaged: it is then exported again). Another
    export's record is refused."""
    path = osp.join(args.out, RECORD_NAME)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    wanted = dict(format=args.format, model=args.model, identity=identity)
    differ = [k for k in wanted if record.get(k) != wanted[k]]
    if differ:
        raise ValueError(
            f'{path} records another export (its {", ".join(differ)} '
            f'differ); refusing to mix tokens: choose a new --out or pass '
            f'--overwrite')
    for name, digest in record['files'].items():
        file = osp.join(args.out, name)
        if not osp.isfile(file) or sha256_file(file) != digest:
            print(f'{file} is missing or damaged: exporting again')
            os.remove(path)
            return None
    return record


def main(argv=None):
    """Run the export; returns the manifest (``--format wds``) or the
    record of ``export.json``, on rank 0 (None on the other ranks)."""
    args = parse_args(argv)
    owns_group = setup_dist(args)
    result = export(args)
    if owns_group:  # not on errors: torchrun / srun end the other ranks
        finalize_dist()
    return result


def export(args):
    """:func:`main` after the process group is set up."""
    rank = get_rank()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.trust_checkpoint:
        trust_pickled_checkpoints(True)
    model = load_tokenizer(cfg, args.checkpoint, device=args.device)
    llm_table, id_map = llm_ids_of(model, args)
    dataset = build_dataset(cfg, args.data)
    dataset_cfg = cfg[f'{args.data}_dataloader'].dataset
    if args.hflip_pairs:
        dataset = HFlipPairs(dataset, args.seed)
        dataset_cfg = ConfigDict(dataset_cfg.to_dict(), hflip_pairs=True)
    codebook_size = int(model.codebook_size)
    if llm_table is not None:  # the stored ids are LLM ids
        codebook_size = int(llm_table.max()) + 1
    identity = dict(
        config_sha256=config_sha256(cfg.model),
        checkpoint_sha256=sha256_file(args.checkpoint),
        dataset_sha256=config_sha256(dataset_cfg),
        data=args.data, seed=args.seed, num_samples=len(dataset),
        shard_size=args.shard_size, codebook_size=codebook_size,
        dtype=index_dtype(codebook_size, args.signed_ids).name,
        token_order=(sequence_order(model.quantizer)
                     if args.flat_sequence else None),
        id_map=id_map)
    if args.format == 'wds':
        return export_shards(model, dataset, identity, args.out, args,
                             llm_table)
    if args.format == 'seit' and codebook_size > NUM_STORABLE_CODES:
        raise ValueError(
            f'the tokenizer has {codebook_size} codes; the SeiT format '
            f'stores codes 0..{NUM_STORABLE_CODES - 1} only: use --format '
            f'compact or wds')

    dst = osp.join(args.out, converted_name(args))
    outputs = output_files(dst, args.format)
    record_path = osp.join(args.out, RECORD_NAME)
    shard_dir = osp.join(args.out, SHARD_DIR)
    record = None
    if rank == 0:  # the checks that read and delete files
        if args.overwrite:
            for path in [record_path, *outputs]:
                if osp.exists(path):
                    os.remove(path)
        record = finished_export(args, identity)
        if record is None and not osp.isdir(shard_dir) and any(
                osp.exists(p) for p in outputs):
            raise FileExistsError(
                f'{dst} exists but {args.out} has neither {RECORD_NAME} nor '
                f'{SHARD_DIR}/: choose a new --out or pass --overwrite')
    if broadcast_from_rank0(record is not None):
        if rank == 0:
            print(f'{args.out} already holds this export ({record_path})')
        return record
    export_shards(model, dataset, identity, shard_dir, args)
    if rank != 0:  # rank 0 converts the shards
        return None
    result = convert_tokens(shard_dir, dst, args.format, model=args.model,
                            overwrite=True)
    codebook = seit_codebook(model) if args.format == 'seit' else None
    if codebook is not None:
        outputs.append(osp.join(args.out, CODEBOOK_NAME))
        write_seit_codebook(outputs[-1], codebook)
    record = dict(format=args.format, model=args.model, identity=identity,
                  files={osp.basename(p): sha256_file(p)
                         for p in outputs if osp.exists(p)}, **result)
    write_text_atomic(json.dumps(record, indent=1), record_path)
    if not args.keep_shards:
        shutil.rmtree(shard_dir)
    print(f'{result["num_images"]} images in {args.format} format: '
          f'{", ".join(record["files"])} ({result["bytes"]} bytes) in '
          f'{args.out}')
    return record


if __name__ == '__main__':
    main()
