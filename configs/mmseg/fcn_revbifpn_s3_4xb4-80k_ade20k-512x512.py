# fcn_revbifpn_s4_4xb4-80k_ade20k-512x512.py with RevBiFPN-S3: arch, channels and ImageNet weights changed.
_base_ = './fcn_revbifpn_s4_4xb4-80k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        arch='s3',
        drop_path_rate=0.0,  # as the S4 file: mmseg's HRNet configs have no stochastic depth
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s3.pth.tar')),
    decode_head=dict(in_channels=[128, 160, 336, 848], channels=1472))
