"""An independent reference of the taming-transformers VQGAN (Esser et al.
2021), written for the converter test from the module definitions of
CompVis/taming-transformers at commit
3ba01b241669f5ade541ce990f7650a3b8f65318:

* ``taming/modules/diffusionmodules/model.py``: ``Normalize`` (GroupNorm,
  32 groups, eps 1e-6), ``nonlinearity`` (swish ``x·sigmoid(x)``),
  ``Upsample`` (nearest ×2, conv3×3), ``Downsample`` (``F.pad`` by
  ``(0, 1, 0, 1)`` — right and bottom only — then a stride-2 conv3×3
  without padding), ``ResnetBlock`` (norm1, swish, conv1, norm2, swish,
  dropout, conv2; a 1×1 ``nin_shortcut`` on the *input* when the channel
  count changes), ``AttnBlock`` (single head over the ``h·w`` positions:
  ``w = softmax(qᵀk / √c)`` over the key axis, ``h = v wᵀ`` with ``bmm``,
  then ``proj_out`` and the residual), ``Encoder`` and ``Decoder`` (levels
  ``down[i]`` / ``up[i]`` of ``block`` and, at the feature-map sizes in
  ``attn_resolutions``, ``attn``; ``mid.block_1``, ``mid.attn_1``,
  ``mid.block_2``; ``norm_out``, swish, ``conv_out``). ``Encoder`` and
  ``Decoder`` build their ResnetBlocks with ``temb_channels=0`` and call
  them with ``temb=None``, and never set ``conv_shortcut``, so those
  branches (and ``Decoder.give_pre_end``) are left out here.
* ``taming/modules/vqvae/quantize.py`` ``VectorQuantizer2`` (``VQModel``
  imports it as ``VectorQuantizer``), with ``VQModel``'s arguments
  ``beta=0.25``, ``remap=None``, ``legacy=True``: squared distances
  ``|z|² + |e|² - 2 z·e`` (``einsum``), ``argmin``, codes from
  ``embedding``, the "legacy" loss ``mean((sg[z_q] - z)²) + β·mean((z_q -
  sg[z])²)``, the straight-through ``z + (z_q - z).detach()``;
  ``get_codebook_entry(indices, shape)``. Without ``sane_index_shape`` the
  indices come back flat ``(B·h·w, )`` in raster order.
* ``taming/models/vqgan.py`` ``VQModel``: ``encode`` = encoder ->
  ``quant_conv`` (1×1, ``z_channels -> embed_dim``) -> quantize; ``decode`` =
  ``post_quant_conv`` (1×1, ``embed_dim -> z_channels``) -> decoder;
  ``forward`` = decode(encode). ``VQModel.decode_code`` calls
  ``quantize.embed_code``, which ``VectorQuantizer2`` does not have;
  :meth:`VQModel.decode_code` here decodes codes the way taming's
  ``Net2NetTransformer.decode_to_img`` does
  (``get_codebook_entry(indices, (b, h, w, c))`` then ``decode``). The
  training loss ``loss.*`` (``VQLPIPSWithDiscriminator``) is left out.

Images are in ``[-1, 1]`` (taming's data loaders). Module names are the
official ones, so ``VQModel(...).state_dict()`` is the generator half of an
official checkpoint's ``state_dict``. Plain torch: no vistok import.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

#: taming's GroupNorm group count (``Normalize``)
NUM_GROUPS = 32


def nonlinearity(x):
    # swish
    return x * torch.sigmoid(x)


def Normalize(in_channels):
    return nn.GroupNorm(num_groups=NUM_GROUPS, num_channels=in_channels,
                        eps=1e-6, affine=True)


class Upsample(nn.Module):

    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3,
                              stride=1, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode='nearest')
        return self.conv(x)


class Downsample(nn.Module):

    def __init__(self, in_channels):
        super().__init__()
        # no asymmetric padding in torch conv, must do it ourselves
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3,
                              stride=2, padding=0)

    def forward(self, x):
        x = F.pad(x, (0, 1, 0, 1), mode='constant', value=0)
        return self.conv(x)


class ResnetBlock(nn.Module):

    def __init__(self, *, in_channels, out_channels=None, dropout):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3,
                               stride=1, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3,
                               stride=1, padding=1)
        if self.in_channels != self.out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels,
                                          kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        h = x
        h = self.norm1(h)
        h = nonlinearity(h)
        h = self.conv1(h)
        h = self.norm2(h)
        h = nonlinearity(h)
        h = self.dropout(h)
        h = self.conv2(h)
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):

    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, 1)
        self.k = nn.Conv2d(in_channels, in_channels, 1)
        self.v = nn.Conv2d(in_channels, in_channels, 1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x):
        h_ = self.norm(x)
        q = self.q(h_)
        k = self.k(h_)
        v = self.v(h_)

        # compute attention
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w)
        q = q.permute(0, 2, 1)  # b,hw,c
        k = k.reshape(b, c, h * w)  # b,c,hw
        w_ = torch.bmm(q, k)  # b,hw,hw  w[b,i,j]=sum_c q[b,i,c]k[b,c,j]
        w_ = w_ * (int(c)**(-0.5))
        w_ = F.softmax(w_, dim=2)

        # attend to values
        v = v.reshape(b, c, h * w)
        w_ = w_.permute(0, 2, 1)  # b,hw,hw (first hw of k, second of q)
        h_ = torch.bmm(v, w_)  # b,c,hw (hw of q)
        h_ = h_.reshape(b, c, h, w)
        h_ = self.proj_out(h_)
        return x + h_


class Encoder(nn.Module):

    def __init__(self, *, ch, ch_mult, num_res_blocks, attn_resolutions,
                 in_channels, resolution, z_channels, dropout=0.0,
                 double_z=True, **ignore_kwargs):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1,
                                 padding=1)
        curr_res = resolution
        in_ch_mult = (1, ) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for i_block in range(self.num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in,
                                         out_channels=block_out,
                                         dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                curr_res = curr_res // 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in,
                                       out_channels=block_in,
                                       dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in,
                                       out_channels=block_in,
                                       dropout=dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in,
                                  2 * z_channels if double_z else z_channels,
                                  kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        hs = [self.conv_in(x)]
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                h = self.down[i_level].block[i_block](hs[-1])
                if len(self.down[i_level].attn) > 0:
                    h = self.down[i_level].attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(self.down[i_level].downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_1(h)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h)

        h = self.norm_out(h)
        h = nonlinearity(h)
        return self.conv_out(h)


class Decoder(nn.Module):

    def __init__(self, *, ch, out_ch, ch_mult, num_res_blocks,
                 attn_resolutions, resolution, z_channels, dropout=0.0,
                 **ignorekwargs):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2**(self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3,
                                 stride=1, padding=1)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in,
                                       out_channels=block_in,
                                       dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in,
                                       out_channels=block_in,
                                       dropout=dropout)

        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for i_block in range(self.num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in,
                                         out_channels=block_out,
                                         dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in)
                curr_res = curr_res * 2
            self.up.insert(0, up)  # prepend to get consistent order

        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1,
                                  padding=1)

    def forward(self, z):
        h = self.conv_in(z)

        h = self.mid.block_1(h)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h)

        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)

        h = self.norm_out(h)
        h = nonlinearity(h)
        return self.conv_out(h)


class VectorQuantizer(nn.Module):
    """``VectorQuantizer2`` with ``remap=None`` and ``legacy=True``."""

    def __init__(self, n_e, e_dim, beta, sane_index_shape=False):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)
        self.sane_index_shape = sane_index_shape

    def forward(self, z):
        # reshape z -> (batch, height, width, channel) and flatten
        z = z.permute(0, 2, 3, 1).contiguous()
        z_flattened = z.view(-1, self.e_dim)
        # distances from z to embeddings e_j (z - e)^2 = z^2 + e^2 - 2 e * z
        d = torch.sum(z_flattened**2, dim=1, keepdim=True) + \
            torch.sum(self.embedding.weight**2, dim=1) - 2 * \
            torch.einsum('bd,dn->bn', z_flattened,
                         self.embedding.weight.t())

        min_encoding_indices = torch.argmin(d, dim=1)
        z_q = self.embedding(min_encoding_indices).view(z.shape)

        # legacy: beta on the codebook term
        loss = torch.mean((z_q.detach() - z)**2) + self.beta * \
            torch.mean((z_q - z.detach())**2)

        # preserve gradients
        z_q = z + (z_q - z).detach()

        # reshape back to match original input shape
        z_q = z_q.permute(0, 3, 1, 2).contiguous()

        if self.sane_index_shape:
            min_encoding_indices = min_encoding_indices.reshape(
                z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, min_encoding_indices)

    def get_codebook_entry(self, indices, shape):
        # shape specifying (batch, height, width, channel)
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape)
            # reshape back to match original input shape
            z_q = z_q.permute(0, 3, 1, 2).contiguous()
        return z_q


class VQModel(nn.Module):
    """The generator half of taming's ``VQModel``; ``ddconfig`` is the
    ``Encoder`` / ``Decoder`` keyword arguments (e.g. the released f16
    layout: ``ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
    attn_resolutions=(16, ), resolution=256, z_channels=256,
    double_z=False, in_channels=3, out_ch=3``)."""

    def __init__(self, ddconfig, n_embed, embed_dim, sane_index_shape=False):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25,
                                        sane_index_shape=sane_index_shape)
        self.quant_conv = nn.Conv2d(ddconfig['z_channels'], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig['z_channels'],
                                         1)

    def encode(self, x):
        h = self.encoder(x)
        h = self.quant_conv(h)
        quant, emb_loss, info = self.quantize(h)
        return quant, emb_loss, info

    def decode(self, quant):
        quant = self.post_quant_conv(quant)
        return self.decoder(quant)

    def decode_code(self, indices, shape):
        """Images of flat ``indices`` ``(b·h·w, )`` for ``shape`` ``(b, h, w,
        embed_dim)`` (``Net2NetTransformer.decode_to_img``)."""
        return self.decode(self.quantize.get_codebook_entry(indices, shape))

    def forward(self, input):
        quant, diff, _ = self.encode(input)
        dec = self.decode(quant)
        return dec, diff
