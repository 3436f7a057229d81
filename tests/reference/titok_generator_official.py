"""An independent reference of TiTok's MaskGIT generators (Yu et al. 2024,
"An Image is Worth 32 Tokens for Reconstruction and Generation"), written
for the converter test from the module definitions of bytedance/1d-tokenizer
at commit 942a96fbdd873780179d1b78d5462911528bf8c8:

* ``modeling/maskgit.py`` ``ImageBert`` (the B-64 / L-32 generators): a
  Hugging Face ``BertModel(BertConfig(vocab_size = codebook_size +
  condition_num_classes + 2, hidden_act='gelu', max_position_embeddings =
  image_seq_len + 1, layer_norm_eps=1e-12, position_embedding_type=
  'absolute'), add_pooling_layer=False)`` under ``model`` with
  ``model.lm_head = nn.Linear(hidden, codebook_size)``; ``forward(input_ids,
  condition, cond_drop_prob)`` shifts the class ids by ``codebook_size + 1``
  (a dropped label becomes ``codebook_size + 1 + condition_num_classes``),
  prepends them to the ``(B, N)`` token ids (mask id ``codebook_size``),
  runs the BERT and returns ``lm_head`` of every position but the first.
  The BERT itself is re-written from ``transformers`` ``models/bert/
  modeling_bert.py`` (the layout ``ImageBert`` uses): ``BertEmbeddings``
  (``word_embeddings[ids] + token_type_embeddings[0] +
  position_embeddings[arange]`` -> ``LayerNorm`` -> dropout; the token type
  table has ``type_vocab_size = 2`` rows, row 1 never used),
  ``BertLayer`` = ``BertAttention`` (``query`` / ``key`` / ``value`` with
  bias, softmax of ``q kᵀ / √d_h``, ``output.dense``, ``output.LayerNorm(h
  + x)``), ``BertIntermediate`` (``dense``, exact GELU), ``BertOutput``
  (``dense``, ``LayerNorm(h + x)``): a post-LN block, no final norm.
* ``modeling/maskgit.py`` ``UViTBert`` (the S-128 generator; its
  ``__init__`` builds the BERT of ``ImageBert`` and deletes it):
  ``embeddings`` (one ``nn.Embedding`` of ``codebook_size +
  condition_num_classes + 2`` rows, the same id space), ``pos_embed``
  ``(1, image_seq_len + 1, hidden)``, ``num_hidden_layers // 2`` ``in_blocks``,
  a ``mid_block``, ``num_hidden_layers // 2`` ``out_blocks`` with long
  skips (``blk(x, skips.pop())``), ``norm`` (LayerNorm, eps 1e-5) and
  ``lm_head``; no dropout anywhere (the blocks are built without ``drop`` /
  ``attn_drop``).
* ``modeling/modules/blocks.py`` ``UViTBlock`` (``skip_linear(cat[x,
  skip])`` when ``skip=True``, then pre-LN ``x + attn(norm1(x))``, ``x +
  mlp(norm2(x))``), its ``Attention`` (``qkv`` Linear without bias for the
  generator, the ``B L (K H D)`` head split, ``proj`` with bias) and ``Mlp``
  (``fc1`` / GELU / ``fc2``).

Sizes are keyword arguments (the official code reads them from its config:
``configs/infer/TiTok/titok_{s128,b64,l32}.yaml``, :data:`RELEASES`). Module
and parameter names are the official ones, so ``state_dict()`` of these
modules is an official-layout checkpoint. Plain torch: no vistok import.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: ``configs/infer/TiTok/*.yaml`` ``model.generator`` of the releases:
#: class, hidden_size, num_hidden_layers, num_attention_heads,
#: intermediate_size, image_seq_len (= num_latent_tokens); codebook 4096,
#: 1000 classes
RELEASES = dict(
    s128=('UViTBert', 1024, 20, 16, 4096, 128),
    b64=('ImageBert', 768, 24, 16, 3072, 64),
    l32=('ImageBert', 768, 24, 16, 3072, 32),
)
CODEBOOK_SIZE, NUM_CLASSES = 4096, 1000


def _attention(q, k, v, num_heads):
    """Softmax attention of ``(B, L, C)`` projections split into heads as
    ``(H, D_h)`` on the channel axis."""
    b, n, c = q.shape
    q, k, v = (t.view(b, n, num_heads, c // num_heads).transpose(1, 2)
               for t in (q, k, v))
    weights = (q @ k.transpose(-2, -1) / math.sqrt(c // num_heads)).softmax(-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, c)


def _class_ids(condition, cond_drop_prob, codebook_size, num_classes):
    """``ImageBert.forward``'s class shift and label drop."""
    drop = torch.rand_like(condition, dtype=torch.float) < cond_drop_prob
    condition = condition + codebook_size + 1
    condition[drop] = num_classes + codebook_size + 1
    return condition


# --- ImageBert ---------------------------------------------------------------
class BertEmbeddings(nn.Module):

    def __init__(self, vocab_size, hidden, max_positions, eps):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids):
        types = torch.zeros_like(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.token_type_embeddings(types)
        x = x + self.position_embeddings(positions)[None]
        return self.LayerNorm(x)


class _Dense(nn.Module):
    """A ``dense`` Linear and, with ``eps``, a post-``LayerNorm`` of the
    residual sum (``BertSelfOutput`` / ``BertOutput``)."""

    def __init__(self, cin, cout, eps=None):
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x, residual=None):
        x = self.dense(x)
        return x if residual is None else self.LayerNorm(x + residual)


class BertSelfAttention(nn.Module):

    def __init__(self, hidden, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x):
        return _attention(self.query(x), self.key(x), self.value(x),
                          self.num_heads)


class BertAttention(nn.Module):

    def __init__(self, hidden, num_heads, eps):
        super().__init__()
        self.self = BertSelfAttention(hidden, num_heads)
        self.output = _Dense(hidden, hidden, eps)

    def forward(self, x):
        return self.output(self.self(x), x)


class BertLayer(nn.Module):

    def __init__(self, hidden, num_heads, intermediate, eps):
        super().__init__()
        self.attention = BertAttention(hidden, num_heads, eps)
        self.intermediate = _Dense(hidden, intermediate)
        self.output = _Dense(intermediate, hidden, eps)

    def forward(self, x):
        x = self.attention(x)
        return self.output(F.gelu(self.intermediate(x)), x)


class BertEncoder(nn.Module):

    def __init__(self, layers):
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layer:
            x = layer(x)
        return x


class BertModel(nn.Module):
    """``BertModel(add_pooling_layer=False)`` in eval mode, plus the
    ``lm_head`` ``ImageBert`` attaches to it."""

    def __init__(self, vocab_size, hidden, num_layers, num_heads,
                 intermediate, max_positions, codebook_size, eps=1e-12):
        super().__init__()
        self.embeddings = BertEmbeddings(vocab_size, hidden, max_positions,
                                         eps)
        self.encoder = BertEncoder(
            BertLayer(hidden, num_heads, intermediate, eps)
            for _ in range(num_layers))
        self.lm_head = nn.Linear(hidden, codebook_size)

    def forward(self, ids):
        return self.encoder(self.embeddings(ids))


class ImageBert(nn.Module):
    """``modeling/maskgit.py`` ``ImageBert`` (eval mode)."""

    def __init__(self, codebook_size=CODEBOOK_SIZE, num_classes=NUM_CLASSES,
                 image_seq_len=32, hidden_size=768, num_hidden_layers=24,
                 num_attention_heads=16, intermediate_size=3072):
        super().__init__()
        self.codebook_size = codebook_size
        self.num_classes = num_classes
        self.model = BertModel(codebook_size + num_classes + 2, hidden_size,
                               num_hidden_layers, num_attention_heads,
                               intermediate_size, image_seq_len + 1,
                               codebook_size)

    def forward(self, input_ids, condition, cond_drop_prob=0.1):
        condition = _class_ids(condition, cond_drop_prob, self.codebook_size,
                               self.num_classes)
        ids = torch.cat([condition.view(len(condition), -1),
                         input_ids.view(len(input_ids), -1)], dim=1)
        return self.model.lm_head(self.model(ids)[:, 1:])


# --- UViTBert ----------------------------------------------------------------
class Attention(nn.Module):

    def __init__(self, dim, num_heads, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 'B L (K H D)', K first
        return self.proj(_attention(q, k, v, self.num_heads))


class Mlp(nn.Module):

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class UViTBlock(nn.Module):

    def __init__(self, dim, num_heads, mlp_ratio, skip=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViTBert(nn.Module):
    """``modeling/maskgit.py`` ``UViTBert``."""

    def __init__(self, codebook_size=CODEBOOK_SIZE, num_classes=NUM_CLASSES,
                 image_seq_len=128, hidden_size=1024, num_hidden_layers=20,
                 num_attention_heads=16, intermediate_size=4096):
        super().__init__()
        self.codebook_size = codebook_size
        self.num_classes = num_classes
        ratio = intermediate_size / hidden_size
        self.embeddings = nn.Embedding(codebook_size + num_classes + 2,
                                       hidden_size)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, image_seq_len + 1, hidden_size))
        self.in_blocks = nn.ModuleList(
            UViTBlock(hidden_size, num_attention_heads, ratio)
            for _ in range(num_hidden_layers // 2))
        self.mid_block = UViTBlock(hidden_size, num_attention_heads, ratio)
        self.out_blocks = nn.ModuleList(
            UViTBlock(hidden_size, num_attention_heads, ratio, skip=True)
            for _ in range(num_hidden_layers // 2))
        self.norm = nn.LayerNorm(hidden_size)
        self.lm_head = nn.Linear(hidden_size, codebook_size)

    def forward(self, input_ids, condition, cond_drop_prob=0.1):
        condition = _class_ids(condition, cond_drop_prob, self.codebook_size,
                               self.num_classes)
        ids = torch.cat([condition.view(len(condition), -1),
                         input_ids.view(len(input_ids), -1)], dim=1)
        x = self.embeddings(ids)
        x = x + self.pos_embed[:, :x.shape[1]]
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        return self.lm_head(self.norm(x)[:, 1:])


def build_release(name, device='cpu'):
    """The official generator of release ``name`` (:data:`RELEASES`) at full
    size, on ``device`` (``'meta'``: shapes only)."""
    kind, hidden, layers, heads, intermediate, seq_len = RELEASES[name]
    cls = dict(ImageBert=ImageBert, UViTBert=UViTBert)[kind]
    with torch.device(device):
        return cls(image_seq_len=seq_len, hidden_size=hidden,
                   num_hidden_layers=layers, num_attention_heads=heads,
                   intermediate_size=intermediate)


def randomize_(module, generator, std=0.3):
    """Every parameter of ``module`` drawn from ``N(0, std²)`` (LayerNorm
    weights from ``N(1, std²)``), so every tensor changes the output."""
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=generator) * std)
                if isinstance(m, nn.LayerNorm) and name == 'weight':
                    p.add_(1.0)
    return module
