"""The MLLM side of UniCode: image ids go through the *same* causal LM as
text, embedded by the LM's own token-embedding table (no projector).

UniCode's visual codebook is (a subset of) the LLM's embedding table E, so
an image's ids are LLM vocabulary ids and its visual embeddings are E[ids]
(with ``mm_use_mlp False`` the official LLaVA code feeds the vision
tower's quantized vectors to the LLM directly, ``src/model/llava_arch.py``
``encode_images``). :class:`UniCodeBridge` builds LLaVA-style sequences
from annotation records (:mod:`.annotations`), computes the LM's loss on
them through ``inputs_embeds`` and generates image ids.

**Visual inputs and the official scaling.** ``<image>`` in a human turn
is replaced by the record's ``visual_tokens`` at *visual-input* positions,
embedded as E[ids] (default) or, with ``visual_scale=s``, as s·E[ids]:
the official tokenizer hands the LLM z_q = E_t[ids]·30·mean‖E_LLM‖
(``EMAVectorQuantizer.forward``, ``src/vae/models/stage1/modules/
quantizer.py``: codes scaled by ``fix_len_l2norm · llm_len_l2norm.mean()``)
and at λ = 1 its codebook E_t is r·E_LLM[selected], so z_q =
s·E_LLM[ids] with s = :func:`official_visual_scale` (r, the latent-norm
ratio the quantizer logs; :func:`quantizer_visual_scale` reads it from the
tokenizer). The two options differ only by s at visual-input
positions; ids written as ``<vistok>`` text (prompt or answer) are plain
token ids, embedded as E[ids] in both, as in the official parser.

**Sequence and labels.** LLaVA-1.5's ``conv_vicuna_v1`` template, as the
official ``preprocess_v1`` (``src/datasets/preprocess.py``) uses it:
``<s>{system} USER: {q} ASSISTANT:{a}</s> USER: …``. Labels follow
``preprocess_v1``: the BOS, the system prompt and every human turn up to and
including ``ASSISTANT:`` are ``IGNORE_INDEX`` (-100), visual inputs too
(as LLaVA's ``prepare_inputs_labels_for_multimodal``), the answers and the
``</s>`` closing each are learned; padding is ignored. Unlike LLaVA, which
tokenizes the whole prompt and re-tokenizes rounds to find lengths, every
piece is tokenized on its own, so labels line up by construction.
``<vistok>`` spans become ``[<vistok>] ids [</vistok>]`` with the markers
as added special tokens (``markers=False``: the ids alone, as the official
parser).

**Generation.** The prompt ends with ``ASSISTANT:<vistok>``; every step is
restricted to the selected vocabulary subset until ``num_tokens`` ids are
out, then to ``</vistok>`` (:class:`ImageIdConstraint`), so the output
always decodes (:func:`.image_ids.ids_to_images`).

**Training.** ``freeze_codebook`` (default) freezes the input embeddings
(the unified codebook: the tokenizer's codes are these rows) and
``freeze_lm_head`` (default) the output head, as the official
``src/train/train_unicode.py`` does without LoRA (a pretrained LLM's head
already reads its vocabulary; a randomly initialised one must learn).

transformers is the optional extra ``vistok[llm]``, imported inside the
functions (:func:`.llm_tokenizer.require_transformers`).
"""
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from vistok.models.utils.token_ids import llm_codebook_parts
from .annotations import IMAGE_PLACEHOLDER
from .llm_tokenizer import add_vistok_tokens, require_transformers
from .token_text import segment_input_ids, split_image_spans

#: label of positions the loss ignores (LLaVA's ``IGNORE_INDEX``)
IGNORE_INDEX = -100
#: the official latent-norm cap (``fix_len_l2norm`` default of
#: ``EMAVectorQuantizer``)
OFFICIAL_FIX_LEN_L2NORM = 30.0
VICUNA_V1_SYSTEM = (
    'A chat between a curious user and an artificial intelligence '
    'assistant. The assistant gives helpful, detailed, and polite answers '
    'to the user\'s questions.')


@dataclass(frozen=True)
class ConversationTemplate:
    """LLaVA's ``SeparatorStyle.TWO`` template (``conv_vicuna_v1``); the
    second separator is the tokenizer's EOS id."""
    system: str = VICUNA_V1_SYSTEM
    roles: Tuple[str, str] = ('USER', 'ASSISTANT')
    sep: str = ' '

    def human_piece(self, value: str, first: bool) -> str:
        head = self.system + self.sep if first else self.sep
        return (f'{head}{self.roles[0]}: {value}{self.sep}'
                f'{self.roles[1]}:')


VICUNA_V1 = ConversationTemplate()


def official_visual_scale(latent_ratio: float,
                          llm_norms: torch.Tensor,
                          fix_len_l2norm: float = OFFICIAL_FIX_LEN_L2NORM
                          ) -> float:
    """s of the official z_q = s·E_LLM[ids]: ``latent_ratio`` (r, the
    quantizer's logged ratio) · ``fix_len_l2norm`` (30) · mean of
    ``llm_norms`` (the l2 norms of the selected LLM rows)."""
    if not latent_ratio > 0:
        raise ValueError(f'latent_ratio must be > 0, got {latent_ratio!r}')
    if llm_norms.numel() == 0:
        raise ValueError('llm_norms must not be empty')
    return float(latent_ratio * fix_len_l2norm *
                 llm_norms.double().mean())


def quantizer_visual_scale(quantizer: nn.Module) -> float:
    """s of the official z_q = s·E_LLM[ids] read from a tokenizer's
    quantizer: ``latent_ratio · lookup_scale()`` (r · 30 · mean‖E‖) of its
    LLM-codebook vector quantizer(s)
    (:func:`~vistok.models.utils.token_ids.llm_codebook_parts`), which must
    use ``mix_mode='unicode'``; all of them must give the same s (one scale
    for the bridge)."""
    scales = {}
    for name, part in llm_codebook_parts(quantizer):
        ratio = getattr(part, 'latent_ratio', None)
        if ratio is None or not callable(getattr(part, 'lookup_scale', None)):
            raise ValueError(
                f'{name} ({type(part).__name__}) has no latent_ratio / '
                f'lookup_scale(): the official scaling needs a '
                f"VectorQuantizer with mix_mode='unicode'")
        scales[name] = float(ratio) * float(part.lookup_scale())
    if len(set(scales.values())) > 1:
        raise ValueError(f'the LLM codebooks scale their codes differently '
                         f'({scales}): the bridge takes one visual_scale')
    return next(iter(scales.values()))


class ImageIdConstraint:
    """Logits processor for ``generate``: steps ``0 .. num_tokens - 1``
    may emit only ``allowed_ids``; step ``num_tokens`` only ``end_id``
    (when given)."""

    def __init__(self, allowed_ids: torch.Tensor, num_tokens: int,
                 end_id: Optional[int] = None):
        self.allowed_ids = allowed_ids.long()
        self.num_tokens = num_tokens
        self.end_id = end_id
        self.start = None

    def __call__(self, input_ids: torch.Tensor,
                 scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:  # generate passes the ids made so far
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool,
                              device=scores.device)
        if step < self.num_tokens:
            allowed[self.allowed_ids.to(scores.device)] = True
        elif self.end_id is not None:
            allowed[self.end_id] = True
        return scores.masked_fill(~allowed, float('-inf'))


class UniCodeBridge(nn.Module):
    """A causal LM reading and writing UniCode image ids (see the module
    docstring).

    Args:
        lm: a Hugging Face causal LM (e.g. ``LlamaForCausalLM``).
        tokenizer: its tokenizer; the ``<vistok>`` markers are added to it
            and the LM's embeddings are resized when it grows.
        selected_llm_indices: the LLM ids of the visual codebook (the
            tokenizer's quantizer's buffer,
            :func:`vistok.models.utils.token_ids.llm_id_table`), ids of the
            LM's vocabulary other than the markers.
        visual_scale: ``None`` (visual inputs are E[ids]) or s > 0 (s·E[ids],
            the official z_q; :func:`official_visual_scale`).
        markers: wrap ``<vistok>`` spans in the marker tokens.
        template: the conversation template.
        freeze_codebook: freeze the input embeddings (the codebook).
        freeze_lm_head: freeze the output head.
    """

    def __init__(self,
                 lm: nn.Module,
                 tokenizer,
                 selected_llm_indices: torch.Tensor,
                 visual_scale: Optional[float] = None,
                 markers: bool = True,
                 template: ConversationTemplate = VICUNA_V1,
                 freeze_codebook: bool = True,
                 freeze_lm_head: bool = True):
        super().__init__()
        if visual_scale is not None and not visual_scale > 0:
            raise ValueError(f'visual_scale must be None or > 0, got '
                             f'{visual_scale!r}')
        self.lm = lm
        self.tokenizer = tokenizer
        self.marker_ids = add_vistok_tokens(tokenizer)
        if lm.get_input_embeddings().num_embeddings < len(tokenizer):
            lm.resize_token_embeddings(len(tokenizer))
        selected = torch.as_tensor(selected_llm_indices).long().reshape(-1)
        vocabulary = lm.get_input_embeddings().num_embeddings
        bad = selected[(selected < 0) | (selected >= vocabulary)
                       | torch.isin(selected,
                                    torch.tensor(self.marker_ids))]
        if selected.numel() == 0 or bad.numel():
            raise ValueError(
                f'selected_llm_indices must be {selected.numel() or "some"} '
                f'ids of the LM vocabulary [0, {vocabulary}) other than the '
                f'<vistok> markers {self.marker_ids}; bad: '
                f'{bad.tolist()[:8]}')
        self.register_buffer('selected_llm_indices', selected,
                             persistent=False)
        self.visual_scale = visual_scale
        self.markers = markers
        self.template = template
        if visual_scale is not None:
            print_log(f'UniCodeBridge: visual inputs scaled by s = '
                      f'{visual_scale:.6g} (official z_q = s·E[ids])',
                      logger='current')
        frozen = [lm.get_input_embeddings()] if freeze_codebook else []
        if freeze_lm_head and lm.get_output_embeddings() is not None:
            frozen.append(lm.get_output_embeddings())
        for module in frozen:
            module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, folder: str, selected_llm_indices, *,
                        key: str = 'llm_path', **kwargs) -> 'UniCodeBridge':
        """Tokenizer and causal LM of the local Hugging Face folder
        ``folder`` (``AutoTokenizer`` / ``AutoModelForCausalLM`` with
        ``local_files_only``); ``key`` names it in errors."""
        transformers = require_transformers()
        if not osp.isfile(osp.join(folder, 'config.json')):
            raise FileNotFoundError(
                f'{key}={folder!r} holds no config.json: give a local '
                f'Hugging Face model folder (save_pretrained writes one); '
                f'nothing is downloaded: fetch it on a machine with '
                f'internet, e.g. `hf download lmsys/vicuna-7b-v1.5 '
                f'--local-dir DIR`, and copy DIR here')
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, local_files_only=True)
        lm = transformers.AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True)
        return cls(lm, tokenizer, selected_llm_indices, **kwargs)

    # ------------------------------------------------------------ sequences
    def _piece(self, text: str, image_ids: Optional[Sequence[int]],
               learn: bool, ids: List[int], labels: List[int],
               visual: List[bool]) -> None:
        """Append the ids of ``text`` (``<vistok>`` spans, and ``<image>``
        -> ``image_ids`` as visual inputs) to the running lists."""
        chunks = text.split(IMAGE_PLACEHOLDER)
        for k, chunk in enumerate(chunks):
            if k:
                if image_ids is None:
                    raise ValueError(f'{IMAGE_PLACEHOLDER} in a turn, but '
                                     f'the record has no visual_tokens')
                ids += list(image_ids)
                labels += [IGNORE_INDEX] * len(image_ids)
                visual += [True] * len(image_ids)
            piece, _ = segment_input_ids(
                split_image_spans(chunk), self.tokenizer,
                self.marker_ids if self.markers else None)
            ids += piece
            labels += piece if learn else [IGNORE_INDEX] * len(piece)
            visual += [False] * len(piece)

    def encode_record(self, record: dict,
                      generation_prompt: bool = False) -> Dict[str, list]:
        """``input_ids``, ``labels`` and ``visual`` (bool: visual-input
        position) of one annotation record (see the module docstring).
        ``generation_prompt``: the first human turn only, ending with
        ``ASSISTANT:`` and (with markers) ``<vistok>``."""
        turns = record.get('conversations') or []
        speakers = [turn.get('from') for turn in turns]
        if not turns or speakers != [('human', 'gpt')[i % 2]
                                     for i in range(len(turns))]:
            raise ValueError(f'record {record.get("id")!r}: conversations '
                             f'must alternate human / gpt, got {speakers}')
        image_ids = record.get('visual_tokens')
        ids: List[int] = []
        labels: List[int] = []
        visual: List[bool] = []
        bos = self.tokenizer.bos_token_id
        if bos is not None:
            ids, labels, visual = [bos], [IGNORE_INDEX], [False]
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError('the LLM tokenizer has no eos_token: the '
                             'template closes every answer with it')
        for k, turn in enumerate(turns):
            if k % 2 == 0:
                self._piece(self.template.human_piece(turn['value'], k == 0),
                            image_ids, False, ids, labels, visual)
                if generation_prompt:
                    if self.markers:
                        ids.append(self.marker_ids[0])
                        labels.append(IGNORE_INDEX)
                        visual.append(False)
                    break
            else:
                self._piece(turn['value'], image_ids, True, ids, labels,
                            visual)
                ids.append(eos)
                labels.append(eos)
                visual.append(False)
        return dict(input_ids=ids, labels=labels, visual=visual)

    def collate(self, records: Sequence[dict]) -> Dict[str, torch.Tensor]:
        """A right-padded batch of records: ``input_ids``, ``labels``
        (padding ignored), ``attention_mask`` and ``visual``, all
        ``(B, T)``."""
        encoded = [self.encode_record(record) for record in records]
        length = max(len(e['input_ids']) for e in encoded)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        batch = dict(
            input_ids=torch.full((len(encoded), length), pad),
            labels=torch.full((len(encoded), length), IGNORE_INDEX),
            attention_mask=torch.zeros(len(encoded), length,
                                       dtype=torch.long),
            visual=torch.zeros(len(encoded), length, dtype=torch.bool))
        for b, e in enumerate(encoded):
            n = len(e['input_ids'])
            batch['input_ids'][b, :n] = torch.tensor(e['input_ids'])
            batch['labels'][b, :n] = torch.tensor(e['labels'])
            batch['attention_mask'][b, :n] = 1
            batch['visual'][b, :n] = torch.tensor(e['visual'])
        return batch

    # ------------------------------------------------------------ the LM
    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def embed(self, input_ids: torch.Tensor,
              visual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``inputs_embeds`` ``(B, T, D)``: E[input_ids], times
        ``visual_scale`` at ``visual`` positions when it is set."""
        embeds = self.lm.get_input_embeddings()(input_ids.to(self.device))
        if self.visual_scale is None or visual is None:
            return embeds
        scale = torch.where(visual.to(self.device), self.visual_scale, 1.0)
        return embeds * scale.unsqueeze(-1).to(embeds.dtype)

    def forward(self, batch: Dict[str, torch.Tensor]) -> dict:
        """The LM's next-token loss on a :meth:`collate` batch: ``loss``,
        ``logits`` and ``visual_scale`` (s, or None)."""
        out = self.lm(
            inputs_embeds=self.embed(batch['input_ids'], batch['visual']),
            attention_mask=batch['attention_mask'].to(self.device),
            labels=batch['labels'].to(self.device))
        return dict(loss=out.loss, logits=out.logits,
                    visual_scale=self.visual_scale)

    @torch.no_grad()
    def generate_image_ids(self, records: Sequence[dict], num_tokens: int,
                           **generate_kwargs) -> dict:
        """Image ids for the first human turn of each record (one
        ``generate`` call per record, so no padding enters the prompt).

        Args:
            records: annotation records (a gpt turn, if any, is ignored).
            num_tokens: ids per image (e.g. 320 for UniCode's HQ-VAE).
            generate_kwargs: sampling options of ``generate`` (default
                greedy).

        Returns:
            ``image_ids`` ``(B, num_tokens)`` LLM ids of the selected
            subset and ``tokens``: everything generated (the ids, then
            ``</vistok>`` with markers).
        """
        transformers = require_transformers()
        if not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f'num_tokens must be a positive int, got '
                             f'{num_tokens!r}')
        end = self.marker_ids[1] if self.markers else None
        total = num_tokens + (end is not None)
        pad = self.tokenizer.pad_token_id
        outputs = []
        for record in records:
            prompt = self.encode_record(record, generation_prompt=True)
            input_ids = torch.tensor([prompt['input_ids']])
            constraint = ImageIdConstraint(self.selected_llm_indices,
                                           num_tokens, end)
            options = dict(do_sample=False)
            options.update(generate_kwargs)
            tokens = self.lm.generate(
                inputs_embeds=self.embed(input_ids,
                                         torch.tensor([prompt['visual']])),
                attention_mask=torch.ones_like(input_ids).to(self.device),
                logits_processor=transformers.LogitsProcessorList(
                    [constraint]),
                max_new_tokens=total,
                eos_token_id=end,
                pad_token_id=self.tokenizer.eos_token_id if pad is None
                else pad, **options)
            outputs.append(tokens[:, -total:].cpu())
        tokens = torch.cat(outputs)
        image_ids = tokens[:, :num_tokens]
        if not torch.isin(image_ids, self.selected_llm_indices.cpu()).all():
            raise RuntimeError('generate left the selected vocabulary '
                               'subset: the constraint was not applied')
        return dict(image_ids=image_ids, tokens=tokens)
