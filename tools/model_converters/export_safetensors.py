"""Export a training checkpoint's model (or EMA) weights to safetensors.

    python tools/model_converters/export_safetensors.py CKPT OUT.safetensors
        [--ema] [--ema-prefix ema.]

CKPT is a checkpoint file or a sharded checkpoint directory of an FSDP run
(``iter_N.dcp``, any number of ranks): its shards are consolidated into
whole tensors in one process.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))

from vistok.utils.export import export_safetensors  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint',
                        help='checkpoint file or sharded .dcp directory')
    parser.add_argument('out', help='output .safetensors file')
    parser.add_argument('--ema', action='store_true',
                        help='export the EMA weights instead of the model')
    parser.add_argument('--ema-prefix', default='ema.',
                        help='state_dict prefix of a model-internal EMA copy')
    args = parser.parse_args(argv)
    n = export_safetensors(args.checkpoint, args.out, ema=args.ema,
                           ema_prefix=args.ema_prefix)
    print(f'wrote {n} tensors to {args.out}')


if __name__ == '__main__':
    main()
