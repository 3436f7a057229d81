"""An independent reference of the released EMmamba (``SegMamba``) forward
pass, written for the converter test from the module definitions of
ydchen0806/TokenUnify, commit 221674f4c9b87efc730370dcf0443cf0f334c928:

* ``src/segmamba.py`` (same classes in ``src/models_mamba.py``):
  ``SegMamba`` = ``vit`` (``MambaEncoder``), ``encoder1`` .. ``encoder5``
  (MONAI ``UnetrBasicBlock``, ``res_block=True``, ``norm_name='instance'``,
  stride 1), ``decoder5`` .. ``decoder2`` (MONAI ``UnetrUpBlock``,
  ``upsample_kernel_size=2``), ``decoder1`` (``UnetrBasicBlock``), ``out``
  (MONAI ``UnetOutBlock``) and a sigmoid. ``MambaEncoder``:
  ``downsample_layers`` (stem ``Sequential(Conv3d(in, C0, (1, 7, 7),
  stride 2, padding (0, 3, 3)))``, then ``Sequential(InstanceNorm3d,
  Conv3d(Ci, Ci+1, (1, 2, 2), stride 2))``), ``gscs`` (``GSC``: ``proj`` /
  ``proj2`` 3x3x3 convs, ``proj3`` / ``proj4`` 1x1x1, InstanceNorm + ReLU
  after each; ``proj4(proj2-branch + proj3-branch)`` plus the input),
  ``stages`` (``MambaLayer``: LayerNorm over channels of the flattened
  ``(B, DHW, C)`` sequence, then ``Mamba``, no residual), ``norm{i}``
  (InstanceNorm3d) and ``mlps`` (``MlpChannel``: 1x1x1 conv C -> 2C, GELU,
  2C -> C) on the skip outputs.
* ``mamba_local/mamba_ssm_local/modules/mamba_simple.py`` ``Mamba`` with
  ``bimamba_type="v3"`` and its default ``nslices=5`` (``MambaLayer``
  passes no ``nslices``): ``xz = in_proj.weight @ x``; three
  ``mamba_inner_fn_no_out_proj`` calls (forward on ``xz``; backward on
  ``xz.flip(-1)`` with the ``_b`` parameters, flipped back; inter-slice on
  ``xz.chunk(nslices, -1)`` stacked on a new last axis and flattened, with
  the ``_s`` parameters, then ``reshape(B, d_inner, L / nslices,
  nslices).permute(0, 1, 3, 2).flatten(-2)``); their sum through
  ``out_proj``.
* ``mamba_inner_fn_no_out_proj`` (``ops/selective_scan_interface.py``,
  ``mamba_inner_ref`` without ``out_proj``): ``x, z = xz.chunk(2, 1)``;
  ``x = silu(causal conv1d(x))``; ``x_dbl = x_proj(x)``; ``delta =
  dt_proj.weight @ x_dbl[:dt_rank]``; ``B, C`` the next ``d_state`` rows
  each; ``selective_scan(x, delta, -exp(A_log), B, C, D, z, dt_proj.bias,
  delta_softplus=True)``. vistok's ``selective_scan_reference`` (the
  per-step recurrence of mamba-ssm's ``selective_scan_ref``) stands in for
  the CUDA kernel.

The MONAI blocks are imported, as the official code does.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock

from vistok.models.backbones.mamba import selective_scan_reference


class RefMamba(nn.Module):
    """``Mamba(bimamba_type='v3')``: the parameters of the release."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, nslices=5):
        super().__init__()
        self.d_inner = expand * d_model
        self.dt_rank = -(-d_model // 16)
        self.d_state, self.nslices = d_state, nslices
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        for s in ('', '_b', '_s'):
            setattr(self, f'conv1d{s}', nn.Conv1d(
                self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                padding=d_conv - 1))
            setattr(self, f'x_proj{s}', nn.Linear(
                self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            setattr(self, f'dt_proj{s}', nn.Linear(self.dt_rank,
                                                   self.d_inner))
            setattr(self, f'A{s}_log', nn.Parameter(
                torch.randn(self.d_inner, d_state)))
            setattr(self, f'D{s}', nn.Parameter(torch.randn(self.d_inner)))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def inner(self, xz, s):
        seqlen = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)
        conv = getattr(self, f'conv1d{s}')
        x = F.silu(conv(x)[..., :seqlen])
        x_dbl = torch.einsum('ed,bdl->bel', getattr(self, f'x_proj{s}').weight,
                             x)
        dt_proj = getattr(self, f'dt_proj{s}')
        delta = torch.einsum('dr,brl->bdl', dt_proj.weight,
                             x_dbl[:, :self.dt_rank])
        B = x_dbl[:, self.dt_rank:self.dt_rank + self.d_state]
        C = x_dbl[:, self.dt_rank + self.d_state:]
        A = -torch.exp(getattr(self, f'A{s}_log').float())
        return selective_scan_reference(
            x, delta, A, B, C, getattr(self, f'D{s}').float(), z=z,
            delta_bias=dt_proj.bias.float(), delta_softplus=True)

    def forward(self, hidden):  # (B, L, d_model)
        batch, seqlen, _ = hidden.shape
        xz = torch.einsum('ed,bld->bel', self.in_proj.weight, hidden)
        out = self.inner(xz, '')
        out_b = self.inner(xz.flip([-1]), '_b')
        xz_s = torch.stack(xz.chunk(self.nslices, dim=-1), dim=-1).flatten(-2)
        out_s = self.inner(xz_s, '_s')
        out_s = out_s.reshape(batch, self.d_inner, seqlen // self.nslices,
                              self.nslices).permute(0, 1, 3, 2).flatten(-2)
        return F.linear((out + out_b.flip([-1]) + out_s).transpose(1, 2),
                        self.out_proj.weight)


class RefMambaLayer(nn.Module):

    def __init__(self, dim, nslices):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = RefMamba(dim, nslices=nslices)

    def forward(self, x):
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1).transpose(-1, -2)
        out = self.mamba(self.norm(flat))
        return out.transpose(-1, -2).reshape(x.shape)


class RefMlpChannel(nn.Module):

    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Conv3d(dim, 2 * dim, 1)
        self.fc2 = nn.Conv3d(2 * dim, dim, 1)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefGSC(nn.Module):

    def __init__(self, c):
        super().__init__()
        self.proj = nn.Conv3d(c, c, 3, 1, 1)
        self.proj2 = nn.Conv3d(c, c, 3, 1, 1)
        self.proj3 = nn.Conv3d(c, c, 1, 1, 0)
        self.proj4 = nn.Conv3d(c, c, 1, 1, 0)

    def forward(self, x):

        def block(conv, v):
            return F.relu(F.instance_norm(conv(v)))

        x1 = block(self.proj2, block(self.proj, x))
        return block(self.proj4, x1 + block(self.proj3, x)) + x


class RefMambaEncoder(nn.Module):

    def __init__(self, in_chans, depths, dims, nslices):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv3d(in_chans, dims[0], (1, 7, 7), 2, (0, 3, 3)))])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(
                nn.InstanceNorm3d(dims[i]),
                nn.Conv3d(dims[i], dims[i + 1], (1, 2, 2), stride=2)))
        self.gscs = nn.ModuleList(RefGSC(d) for d in dims)
        self.stages = nn.ModuleList(
            nn.Sequential(*[RefMambaLayer(d, nslices) for _ in range(n)])
            for d, n in zip(dims, depths))
        self.mlps = nn.ModuleList(RefMlpChannel(d) for d in dims)

    def forward(self, x):
        outs = []
        for down, gsc, stage, mlp in zip(self.downsample_layers, self.gscs,
                                         self.stages, self.mlps):
            x = stage(gsc(down(x)))
            outs.append(mlp(F.instance_norm(x)))  # norm{i}: no parameters
        return outs


class RefSegMamba(nn.Module):
    """``SegMamba(in_chans, out_chans, depths, feat_size, hidden_size,
    kernel_size)``; ``forward`` returns the sigmoid output, as released."""

    def __init__(self, in_chans=1, out_chans=3, depths=(2, 2, 2, 2),
                 feat_size=(32, 64, 128, 256), hidden_size=512,
                 kernel_size=(1, 5, 5), nslices=5):
        super().__init__()
        self.vit = RefMambaEncoder(in_chans, depths, feat_size, nslices)
        ins = (in_chans, ) + tuple(feat_size)
        outs = tuple(feat_size) + (hidden_size, )
        for k in range(5):
            setattr(self, f'encoder{k + 1}', UnetrBasicBlock(
                3, ins[k], outs[k], kernel_size, 1, 'instance',
                res_block=True))
        for k in range(5, 1, -1):  # decoder5: hidden -> C3, ... -> C0
            setattr(self, f'decoder{k}', UnetrUpBlock(
                3, outs[k - 1], outs[k - 2], kernel_size, 2, 'instance',
                res_block=True))
        self.decoder1 = UnetrBasicBlock(3, feat_size[0], feat_size[0],
                                        kernel_size, 1, 'instance',
                                        res_block=True)
        self.out = UnetOutBlock(3, feat_size[0], out_chans)

    def forward(self, x_in):
        outs = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(outs[0])
        enc3 = self.encoder3(outs[1])
        enc4 = self.encoder4(outs[2])
        enc_hidden = self.encoder5(outs[3])
        dec3 = self.decoder5(enc_hidden, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return torch.sigmoid(self.out(self.decoder1(dec0)))
