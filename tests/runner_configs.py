"""Config text shared by the Runner tests: the quickstart Faster R-CNN, made deterministic."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART_FASTER = os.path.join(ROOT, "configs", "quickstart", "faster_rcnn_revbifpn_s0_synthetic.py")


def deterministic_faster_rcnn(data_root: str, backbone: str, batch_size: int) -> str:
    """Config text on the quickstart Faster R-CNN without any random choice in training.

    No random augmentation, unshuffled data, PseudoSamplers (no random RoI sampling).

    Args:
        data_root: The generated dataset (ending in ``/``).
        backbone: Keyword arguments for ``model.backbone``, as config source text.
        batch_size: Images per iteration and process.
    """
    return f"""
_base_ = {QUICKSTART_FASTER!r}
data_root = {data_root!r}
model = dict(
    backbone=dict({backbone}),
    train_cfg=dict(rpn=dict(sampler=dict(_delete_=True, type='PseudoSampler')),
                   rcnn=dict(sampler=dict(_delete_=True, type='PseudoSampler'))))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs')]
train_dataloader = dict(batch_size={batch_size}, sampler=dict(type='InfiniteSampler', shuffle=False),
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
"""
