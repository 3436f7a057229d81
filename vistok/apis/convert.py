"""The command line shared by the checkpoint converters in
``tools/model_converters/``.

A converter script gives :func:`converter_main` its rules (a function of
the built model, from :mod:`vistok.apis.converters`), its default config
and its own options; the rule engine is :mod:`vistok.utils.convert`.
"""
import argparse
import os.path as osp
from typing import Callable, Optional, Sequence, Union

import torch.nn as nn
from mmengine.config import DictAction

from vistok.apis.tokenize import load_tokenizer
from vistok.utils.convert import (
    ConversionReport,
    RuleLike,
    convert_for_model,
    load_official_state_dict,
    save_state_dict,
)

RulesFor = Callable[[nn.Module], Sequence[RuleLike]]


#: weights files of a Hugging Face snapshot directory, in order of preference
SNAPSHOT_FILES = ('model.safetensors', 'pytorch_model.bin')


def resolve_checkpoint(path: str) -> str:
    """``path``, or the weights file of a Hugging Face snapshot directory
    (:data:`SNAPSHOT_FILES`, first found)."""
    if not osp.isdir(path):
        return path
    for name in SNAPSHOT_FILES:
        if osp.isfile(osp.join(path, name)):
            return osp.join(path, name)
    raise FileNotFoundError(f'checkpoint directory {path} holds none of '
                            f'{", ".join(SNAPSHOT_FILES)}')


def converter_main(argv: Optional[Sequence[str]], *, description: str,
                   rules_for: RulesFor,
                   default_config: Union[str, Callable[[argparse.Namespace],
                                                       str]],
                   allow_missing: Sequence[str] = (),
                   ignore_unmapped: Sequence[str] = (),
                   add_arguments: Optional[Callable[[argparse.ArgumentParser],
                                                    None]] = None,
                   check: Optional[Callable] = None,
                   build_model: Callable[..., nn.Module] = load_tokenizer
                   ) -> ConversionReport:
    """Command line of a converter script::

        IN OUT [--config CONFIG] [--trust-checkpoint]
            [--allow-missing REGEX ...] [--ignore-unmapped REGEX ...]
            [--cfg-options k=v ...] [the script's own options]

    IN is a checkpoint file or a Hugging Face snapshot directory. Builds
    CONFIG's model (``default_config``: a path, or a function of the parsed
    arguments), converts IN with ``rules_for(model)`` (the patterns given on
    the command line extend ``allow_missing`` / ``ignore_unmapped``), checks
    that the result loads strictly and writes OUT (``.safetensors`` or a
    ``.pth`` with ``{'state_dict': ...}``).

    ``add_arguments(parser)`` adds the script's options; ``check(args,
    official, model)`` runs before converting and returns ``(extra
    ignore_unmapped patterns, a line to print)`` or raises to refuse.
    ``build_model(config, cfg_options=...)`` builds the target model
    (default: :func:`~vistok.apis.tokenize.load_tokenizer`, the config's
    ``model``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('checkpoint', help='official checkpoint (a file or '
                        'a Hugging Face snapshot directory)')
    parser.add_argument('out', help='output .safetensors or .pth file')
    parser.add_argument('--config', help='vistok config of the model' + (
        f' (default: {default_config})' if isinstance(default_config, str)
        else ''))
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow loading the checkpoint as a full pickle '
                        '(needed for PyTorch Lightning checkpoints); this '
                        'can execute code from the file')
    parser.add_argument('--allow-missing', nargs='+', default=[],
                        metavar='REGEX', help='model keys that may keep '
                        'their initial values')
    parser.add_argument('--ignore-unmapped', nargs='+', default=[],
                        metavar='REGEX',
                        help='official keys to drop')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys')
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    config = args.config or (default_config if isinstance(
        default_config, str) else default_config(args))
    checkpoint = resolve_checkpoint(args.checkpoint)
    official = load_official_state_dict(checkpoint,
                                        trust=args.trust_checkpoint)
    model = build_model(config, cfg_options=args.cfg_options)
    extra_ignore, note = (check(args, official, model)
                          if check is not None else ((), None))
    converted, report = convert_for_model(
        official, model, rules_for(model),
        allow_missing=list(allow_missing) + args.allow_missing,
        ignore_unmapped=list(ignore_unmapped) + args.ignore_unmapped +
        list(extra_ignore),
        source=checkpoint)
    save_state_dict(converted, args.out)
    print(report.summary())
    if note:
        print(note)
    print(f'wrote {len(converted)} tensors to {args.out} (loads strictly '
          f'into the model of {config})')
    return report
