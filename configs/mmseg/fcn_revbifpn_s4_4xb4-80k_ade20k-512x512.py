# FCN on RevBiFPN-S4 features, ADE20K, 512x512 crops, 80k iterations (4 GPUs x 4 images).
#
# mmseg's fcn_hr18_4xb4-80k_ade20k-512x512.py with the backbone swapped (the paper fine-tuned
# on mmdet's HRNet configs the same way). All not written here is that config's, unchanged:
# data under data/ade/ADEChallengeData2016/, 150 classes, random resize + 512x512 crops,
# evaluation on whole images resized to a 512 short side (test_cfg mode='whole'), SyncBN
# in train mode, SGD lr 0.01, poly decay.
#
# * Backbone: RevBiFPN-S4 ('neck' outputs: strides 4-32), official ImageNet weights by URL
#   (downloaded once and SHA-256 checked), SyncBN (eps 1e-3, the official BN eps) in train
#   mode as HRNet's (norm_eval=False).
# * Head: LeanFCNHead, which computes FCNHead's outputs (resize_concat of the four levels,
#   1x1 conv + BN + ReLU at sum(in_channels) channels, classifier) and loads its state dicts,
#   without keeping the full-width stride-4 tensors for backward (docs/segmentation.md).
# * Test images are padded to multiples of 32 (RevBiFPN's stride); the prediction is
#   cropped back to the image.
_base_ = 'mmseg::hrnet/fcn_hr18_4xb4-80k_ade20k-512x512.py'

custom_imports = dict(imports=['revbifpn_mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    data_preprocessor=dict(test_cfg=dict(size_divisor=32)),
    backbone=dict(
        _delete_=True,
        type='RevBiFPN',
        arch='s4',
        out_indices=(0, 1, 2, 3),
        out_type='neck',
        norm_cfg=dict(type='SyncBN', eps=1e-3, requires_grad=True),
        norm_eval=False,
        drop_path_rate=0.0,  # mmseg's HRNet configs fine-tune without stochastic depth
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s4.pth.tar')),
    decode_head=dict(
        type='LeanFCNHead',
        in_channels=[192, 256, 512, 1280],
        channels=2240))  # sum(in_channels), as HRNet's FCN head

# Checkpoints are written to a temporary name and renamed into place, and old ones are removed only
# after that (revbifpn_mm.mm.hooks.SafeCheckpointHook): a save cut short never loses the last good one.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
