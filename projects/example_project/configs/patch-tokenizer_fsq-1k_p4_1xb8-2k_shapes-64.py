# The plugin's PatchTokenizer (a tokenizer written against BaseTokenizer's
# public extension points) on the embedded shapes: one FSQ token per 4 x 4
# patch (levels 8-5-5-5: 1,000 codes), L1 reconstruction, the demo schedule.
_base_ = [
    '../../../configs/_base_/datasets/procedural_shapes_64.py',
    '../../../configs/_base_/schedules/adam_2k.py',
    '../../../configs/_base_/default_runtime.py',
]

custom_imports = dict(
    imports=['projects.example_project.example_project'],
    allow_failed_imports=False)

model = dict(
    type='PatchTokenizer',
    patch_size=4,
    quantizer=dict(type='FiniteScalarQuantizer', levels=[8, 5, 5, 5],
                   in_channels=16))
