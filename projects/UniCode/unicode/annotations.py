"""LLaVA-style JSON annotations of UniCode's two image-token tasks, written
from a token export.

The file is a JSON list (the format of LLaVA's ``--data_path``), one record
per exported image, in export order::

    {"id": "17",                                   # the sample's sample_idx
     "task": "text_to_image",
     "conversations": [
        {"from": "human", "value": "Generate an image based on this "
                                   "description: 'a red kite'."},
        {"from": "gpt", "value": "<vistok>812-77-…-301</vistok>."}]}

    {"id": "17",
     "task": "image_decompression",
     "image": "17",
     "visual_tokens": [812, 77, …, 301],
     "conversations": [
        {"from": "human", "value": "<image>\\nDecompress this image into "
                                   "its visual tokens."},
        {"from": "gpt", "value": "<vistok>812-77-…-301</vistok>."}]}

* ``text_to_image`` is the official "full" text-to-image record
  (``get_t2v_anno`` in ``data/process.py`` of zhengsipeng/UniCode-ECCV24):
  a prompt drawn from :data:`TEXT_TO_IMAGE_PROMPTS` (the official list)
  filled with the caption; the answer is the image's ``<vistok>`` text
  followed by ``.``, as there.
* ``image_decompression`` is the paper's in-context pre-training task
  ("image decompression": the model reads an image given as compressed
  visual data and writes out its tokens). The release ships no annotation
  code for it, so this record is vistok's: LLaVA's ``<image>`` placeholder
  in the human turn is where the MLLM reads the image's visual embeddings
  (``visual_tokens``, the same LLM ids the answer spells out; UniCode has
  no projector, :class:`.bridge.UniCodeBridge` embeds them with the LLM's
  own table, optionally scaled as the tokenizer's z_q), and the prompt is
  drawn from :data:`DECOMPRESSION_PROMPTS` (vistok's wording).

Ids are LLM vocabulary ids in the tokenizer's flat token order: the export
must be made with ``tools/export_tokens.py --flat-sequence --llm-ids``
(checked from its manifest). Prompts are drawn with ``random.Random(seed)``,
so the same export, captions and seed give the same file.
"""
import json
import random
from typing import Callable, List, Mapping, Optional, Sequence, Union

from vistok.datasets.token_shards import TokenShardDataset
from vistok.utils.checkpoint import write_text_atomic
from .token_text import format_image_ids

TASKS = ('text_to_image', 'image_decompression')
IMAGE_PLACEHOLDER = '<image>'
#: the official text-to-image prompts (``generate_prompts`` of
#: ``data/process.py``); ``{}`` is the caption
TEXT_TO_IMAGE_PROMPTS = (
    "Generate an image based on this description: '{}'.",
    "Create a photo from the following description: '{}'.",
    "Produce an illustration that reflects this summary: '{}'.",
    "Formulate an image in accordance with the details provided: '{}'.",
    "Develop a picture of the following description: '{}'.",
    "Craft an image according to this narrative: '{}'.",
    "Compose a picture based on the summary: '{}'.",
    "Output an image aligned with this content summary: '{}'.",
    "Render a photo following this brief description: '{}'.",
    "Construct an image that corresponds to the following details: '{}'.",
    "Design an image that matches this description: '{}'.",
    "Generate an image that encapsulates this description: '{}'.",
    "Output an image reflecting this description: '{}'.",
    "Translate the following description into an image: '{}'.",
    "Produce a photo from this visual caption: '{}'.",
    "Sketch out an image adhering to this description: '{}'.",
)
#: vistok's prompts of the image-decompression task (none released)
DECOMPRESSION_PROMPTS = (
    'Decompress this image into its visual tokens.',
    'Write out the visual tokens of this image.',
    'Reconstruct the token sequence of the given image.',
    'Output the image tokens that encode this picture.',
)
#: what follows the ``</vistok>`` of an answer (official: a full stop)
ANSWER_SUFFIX = '.'

Captions = Union[Mapping[int, str], Sequence[str], Callable[[int], str]]


def make_record(task: str, record_id: str, ids: Sequence[int],
                prompt: str, caption: Optional[str] = None) -> dict:
    """One annotation record (see the module docstring). ``prompt`` is a
    template (``{}`` = the caption for ``text_to_image``)."""
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    answer = format_image_ids(ids) + ANSWER_SUFFIX
    if task == 'text_to_image':
        if not caption:
            raise ValueError(f'record {record_id}: text_to_image needs a '
                             f'non-empty caption, got {caption!r}')
        question = prompt.format(caption)
        return dict(id=record_id, task=task,
                    conversations=[role_turn('human', question),
                                   role_turn('gpt', answer)])
    return dict(id=record_id, task=task, image=record_id,
                visual_tokens=[int(i) for i in ids],
                conversations=[
                    role_turn('human', f'{IMAGE_PLACEHOLDER}\n{prompt}'),
                    role_turn('gpt', answer)])


def role_turn(speaker: str, value: str) -> dict:
    return {'from': speaker, 'value': value}


def _caption(captions: Optional[Captions], sample_idx: int,
             position: int) -> Optional[str]:
    if captions is None:
        return None
    if callable(captions):
        return captions(sample_idx)
    if isinstance(captions, Mapping):
        return captions.get(sample_idx)
    return captions[position] if position < len(captions) else None


def check_llm_export(dataset: TokenShardDataset) -> None:
    """The export must hold flat LLM-id sequences."""
    manifest = dataset.manifest
    missing = [flag for flag, ok in (
        ('--flat-sequence', manifest.get('token_order') is not None),
        ('--llm-ids', (manifest.get('id_map') or {}).get('kind') == 'llm'))
        if not ok]
    if missing:
        raise ValueError(
            f'{dataset.data_root} holds no UniCode image ids: re-export it '
            f'with tools/export_tokens.py {" ".join(missing)}')


def build_annotations(export_dir: str, task: str,
                      captions: Optional[Captions] = None,
                      prompts: Optional[Sequence[str]] = None,
                      seed: int = 0) -> List[dict]:
    """The records of every sample of the token export ``export_dir``.

    Args:
        export_dir: a ``tools/export_tokens.py --flat-sequence --llm-ids``
            export (wds shards + manifest).
        task: ``'text_to_image'`` or ``'image_decompression'``.
        captions: ``text_to_image`` only: the caption of each sample, by
            ``sample_idx`` (a mapping or a callable) or by export position
            (a sequence). A missing one raises ``KeyError`` naming it.
        prompts: templates to draw from (default :data:`TEXT_TO_IMAGE_
            PROMPTS` / :data:`DECOMPRESSION_PROMPTS`).
        seed: seed of the prompt draws.
    """
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    if task == 'text_to_image' and captions is None:
        raise ValueError('task text_to_image needs captions')
    if prompts is None:
        prompts = (TEXT_TO_IMAGE_PROMPTS if task == 'text_to_image' else
                   DECOMPRESSION_PROMPTS)
    if not prompts:
        raise ValueError('prompts must not be empty')
    dataset = TokenShardDataset(export_dir)
    check_llm_export(dataset)
    rng = random.Random(seed)
    records = []
    for position in range(len(dataset)):
        sample = dataset[position]
        sample_idx = int(sample['sample_idx'])
        caption = _caption(captions, sample_idx, position)
        if task == 'text_to_image' and not caption:
            raise KeyError(f'no caption for sample_idx {sample_idx} (export '
                           f'position {position}) of {export_dir}')
        records.append(make_record(task, str(sample_idx),
                                   sample['indices'].tolist(),
                                   rng.choice(list(prompts)), caption))
    return records


def write_annotations(export_dir: str, out_file: str, task: str,
                      captions: Optional[Captions] = None,
                      prompts: Optional[Sequence[str]] = None,
                      seed: int = 0) -> List[dict]:
    """:func:`build_annotations` written to ``out_file`` as JSON
    (atomically); returns the records."""
    records = build_annotations(export_dir, task, captions, prompts, seed)
    write_text_atomic(json.dumps(records, indent=1), out_file)
    return records


def load_annotations(path: str) -> List[dict]:
    """Read an annotation file; each record must have ``id`` and
    alternating human / gpt ``conversations``."""
    with open(path) as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f'{path} must hold a JSON list of records')
    for k, record in enumerate(records):
        turns = record.get('conversations') if isinstance(record,
                                                          dict) else None
        speakers = [t.get('from') for t in turns or []]
        if 'id' not in (record or {}) or not turns or speakers != [
                ('human', 'gpt')[i % 2] for i in range(len(turns))]:
            raise ValueError(f'{path}: record {k} needs an id and '
                             f'conversations alternating human / gpt, got '
                             f'{str(record)[:120]}')
    return records
