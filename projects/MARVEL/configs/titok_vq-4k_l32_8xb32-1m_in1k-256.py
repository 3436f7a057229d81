# TiTok-L-32 stage 1 (README: rFID 2.21 after stage 2); 610,314,252
# parameters without the teacher.
_base_ = ['./_base_/titok.py']
