# fcn_revbifpn_s4_4xb4-160k_ade20k-512x512.py with RevBiFPN-S2: arch, channels and ImageNet weights changed.
_base_ = './fcn_revbifpn_s4_4xb4-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        arch='s2',
        drop_path_rate=0.0,  # as the S4 file: mmseg's HRNet configs have no stochastic depth
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s2.pth.tar')),
    decode_head=dict(in_channels=[96, 128, 256, 640], channels=1120))
