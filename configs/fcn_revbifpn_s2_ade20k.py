# Semantic segmentation on ADE20K: FCN head on RevBiFPN-S2 features, 160k iterations.
#
# Built like MMSegmentation's HRNet FCN configs (fcn_hr18_4xb4-160k_ade20k-512x512.py):
# the four backbone outputs are resized to stride 4 and concatenated
# (input_transform='resize_concat', in_index=(0, 1, 2, 3)), then a 1x1 conv + BN + ReLU
# (channels = sum of the inputs) and the classifier. As there, the backbone uses
# SyncBN in train mode (norm_eval=False); on a single device mmengine turns SyncBN
# back into BN. Schedule: SGD lr 0.01, momentum 0.9, wd 5e-4, poly decay, 160k
# iterations at 4 GPUs x 4 images of 512x512 crops.
# Images are padded to multiples of 32 at test time (data_preprocessor.test_cfg), as
# RevBiFPN needs; the prediction is cropped back to the image.
# The ImageNet checkpoint is the official file by URL: downloaded once into the torch
# hub cache, SHA-256 checked on every run (docs/model_zoo.md).
_base_ = 'mmseg::hrnet/fcn_hr18_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['revbifpn_mm'], allow_failed_imports=False)

crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
in_channels = [96, 128, 256, 640]  # RevBiFPN-S2 out_channels

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size, test_cfg=dict(size_divisor=32)),
    backbone=dict(
        _delete_=True,
        type='RevBiFPN',
        arch='s2',
        out_indices=(0, 1, 2, 3),
        out_type='neck',
        norm_cfg=dict(type='SyncBN', eps=1e-3, requires_grad=True),
        norm_eval=False,
        drop_path_rate=0.0,  # none in fine-tuning, as mmseg's HRNet configs (S2's ImageNet rate is 0.0 too)
        init_cfg=dict(type='Pretrained', checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s2.pth.tar')),
    decode_head=dict(
        in_channels=in_channels,
        in_index=(0, 1, 2, 3),
        channels=sum(in_channels),
        input_transform='resize_concat',
        norm_cfg=norm_cfg,
        num_classes=150))
