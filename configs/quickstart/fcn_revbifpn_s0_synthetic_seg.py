# Quickstart (MMSegmentation): FCN head on RevBiFPN-S0 features, trained on the label
# maps of the embedded synthetic shapes dataset (background, circle, square, triangle).
#
# The structure of configs/mmseg/ (mmseg's HRNet FCN: resize_concat of the four backbone
# outputs, 1x1 conv + BN + ReLU, classifier, computed by LeanFCNHead), made CPU-friendly:
# 256x256 images, random initialisation, plain BN in train mode, a narrow head and a short
# AdamW schedule.
# Data: data/synthetic_coco/seg/{img,ann}/{train,val} (tools/train.py generates it).
_base_ = ['mmseg::_base_/models/fcn_hr18.py', 'mmseg::_base_/default_runtime.py']

custom_imports = dict(imports=['revbifpn_mm'], allow_failed_imports=False)

data_root = 'data/synthetic_coco/'
image_size = (256, 256)
in_channels = [48, 64, 128, 320]  # RevBiFPN-S0 out_channels
norm_cfg = dict(type='BN', requires_grad=True)
max_iters = 120
lr = 2e-3  # AdamW, as the detection quickstarts
metainfo = dict(classes=('background', 'circle', 'square', 'triangle'),
                palette=[[0, 0, 0], [220, 50, 50], [50, 190, 70], [50, 90, 225]])

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=image_size, test_cfg=dict(size_divisor=32)),
    backbone=dict(
        _delete_=True,
        type='RevBiFPN',
        arch='s0',
        out_type='neck',
        norm_cfg=dict(type='BN', eps=1e-3, requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    decode_head=dict(
        type='LeanFCNHead',
        in_channels=in_channels,
        in_index=(0, 1, 2, 3),
        channels=128,
        input_transform='resize_concat',
        norm_cfg=norm_cfg,
        num_classes=4))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='BaseSegDataset',
        metainfo=metainfo,
        data_root=data_root,
        data_prefix=dict(img_path='seg/img/train', seg_map_path='seg/ann/train'),
        img_suffix='.jpg',
        seg_map_suffix='.png',
        reduce_zero_label=False,
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='BaseSegDataset',
        metainfo=metainfo,
        data_root=data_root,
        data_prefix=dict(img_path='seg/img/val', seg_map_path='seg/ann/val'),
        img_suffix='.jpg',
        seg_map_suffix='.png',
        reduce_zero_label=False,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=25),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=25, end=max_iters, eta_min=lr * 0.05),
]
auto_scale_lr = dict(enable=False, base_batch_size=4)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
log_processor = dict(by_epoch=False, window_size=10)
