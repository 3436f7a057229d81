# VAR-d16 on ImageFolder tokens: the d17 recipe at depth 16 (314,111,232
# parameters, tested).
_base_ = ['./var_msvr10p2-4k_d17_8xb96-350e_in1k-256.py']
model = dict(depth=16)
