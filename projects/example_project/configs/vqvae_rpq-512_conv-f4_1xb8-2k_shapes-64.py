# The demo tokenizer with the plugin's frozen random-projection quantizer:
# the template for using a plugin module from a config.
_base_ = ['../../../configs/vqvae/vqvae_vq-512_conv-f4_1xb8-2k_shapes-64.py']

custom_imports = dict(
    imports=['projects.example_project.example_project'],
    allow_failed_imports=False)

model = dict(
    quantizer=dict(_delete_=True, type='RandomProjectionQuantizer',
                   in_channels=32, codebook_size=512, code_dim=16))
