"""UniCode's image token ids and MLLM bridge: the ``<vistok>`` text format
and its input ids, LLaVA-style annotations from a token export, LLM ids ↔
images through the visual tokenizer, the ``<vistok>`` markers as special
tokens of an LLM tokenizer, and a causal LM reading / writing image ids
through its own embedding table. transformers (``vistok[llm]``) is imported
only when the LLM side is used."""
from .annotations import (
    DECOMPRESSION_PROMPTS,
    TASKS,
    TEXT_TO_IMAGE_PROMPTS,
    build_annotations,
    load_annotations,
    make_record,
    write_annotations,
)
from .bridge import (
    IGNORE_INDEX,
    VICUNA_V1,
    ConversationTemplate,
    ImageIdConstraint,
    UniCodeBridge,
    official_visual_scale,
    quantizer_visual_scale,
)
from .image_ids import ids_to_codes, ids_to_images, images_to_ids
from .llm_tokenizer import (
    add_vistok_tokens,
    load_llm_tokenizer,
    require_transformers,
)
from .token_text import (
    VISTOK_END,
    VISTOK_START,
    format_image_ids,
    input_ids_to_text,
    parse_image_ids,
    split_image_spans,
    text_to_input_ids,
)

__all__ = [
    'DECOMPRESSION_PROMPTS', 'IGNORE_INDEX', 'TASKS', 'TEXT_TO_IMAGE_PROMPTS',
    'VICUNA_V1', 'VISTOK_END', 'VISTOK_START', 'ConversationTemplate',
    'ImageIdConstraint', 'UniCodeBridge', 'add_vistok_tokens',
    'build_annotations', 'format_image_ids', 'ids_to_codes',
    'ids_to_images', 'images_to_ids', 'input_ids_to_text',
    'load_annotations', 'load_llm_tokenizer', 'make_record',
    'official_visual_scale', 'parse_image_ids', 'quantizer_visual_scale',
    'require_transformers',
    'split_image_spans', 'text_to_input_ids', 'write_annotations'
]
