# fcn_revbifpn_s4_4xb2-80k_cityscapes-512x1024.py with RevBiFPN-S1: arch, channels and ImageNet weights changed.
_base_ = './fcn_revbifpn_s4_4xb2-80k_cityscapes-512x1024.py'

model = dict(
    backbone=dict(
        arch='s1',
        drop_path_rate=0.0,  # as the S4 file: mmseg's HRNet configs have no stochastic depth
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s1.pth.tar')),
    decode_head=dict(in_channels=[64, 80, 160, 416], channels=720))
