"""Whole-model ONNX export of our COCO and ADE20K configs through mmdeploy:
its task processors (pre-processing, the PyTorch and ONNX Runtime models)
and rewriters, with ours (:mod:`.rewriters`) for what it lacks."""
import contextlib
import copy
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import onnxruntime as ort
import torch
from mmengine.config import Config

from .postprocess import detections

OPSET = 17  # LayerNormalization (17) and RoiAlign's half_pixel mode (16)
INPUT = 'input'
DET_OUTPUTS = ['dets', 'labels']
MASK_OUTPUT = 'masks'
SEG_OUTPUT = 'seg_logits'


def is_segmentor(model_cfg: Config) -> bool:
    return model_cfg.get('default_scope') == 'mmseg'


def has_masks(model_cfg: Config) -> bool:
    roi_head = model_cfg.model.get('roi_head') or {}
    return bool(roi_head.get('mask_head'))


def output_names(model_cfg: Config) -> List[str]:
    if is_segmentor(model_cfg):
        return [SEG_OUTPUT]
    return DET_OUTPUTS + ([MASK_OUTPUT] if has_masks(model_cfg) else [])


def _rcnn_post_processing(model_cfg: Config) -> dict:
    """mmdeploy's NMS settings equal to the config's R-CNN ``test_cfg``:
    no pre-NMS top-k (mmdet has none), and a per-class cap equal to the
    per-image one (the best ``max_per_img`` overall are then the same)."""
    rcnn = model_cfg.model.test_cfg.rcnn
    keep = rcnn.max_per_img
    return dict(score_threshold=rcnn.score_thr,
                confidence_threshold=rcnn.score_thr,
                iou_threshold=rcnn.nms.iou_threshold,
                max_output_boxes_per_class=keep, pre_top_k=-1,
                keep_top_k=keep, background_label_id=-1,
                export_postprocess_mask=False)


def deploy_config(model_cfg: Config, dynamic: bool = False,
                  shape: Optional[Sequence[int]] = None) -> Config:
    """mmdeploy's deploy config for ONNX Runtime: one image per run, a
    fixed (``shape`` = H, W or the pre-processed export image's) or
    dynamic height and width."""
    names = output_names(model_cfg)
    onnx = dict(type='onnx', export_params=True,
                keep_initializers_as_inputs=False, opset_version=OPSET,
                save_file='end2end.onnx', input_names=[INPUT],
                output_names=names, optimize=False,
                input_shape=[shape[1], shape[0]] if shape else None)
    if dynamic:
        axes = {INPUT: {2: 'height', 3: 'width'}}
        if is_segmentor(model_cfg):
            axes[SEG_OUTPUT] = {2: 'height', 3: 'width'}
        else:
            axes.update({name: {1: 'num_dets'} for name in names})
        onnx['dynamic_axes'] = axes
    if is_segmentor(model_cfg):
        codebase = dict(type='mmseg', task='Segmentation', with_argmax=False)
    else:
        codebase = dict(type='mmdet', task='ObjectDetection',
                        model_type='end2end',
                        post_processing=_rcnn_post_processing(model_cfg))
    return Config(dict(onnx_config=onnx, codebase_config=codebase,
                       backend_config=dict(type='onnxruntime')))


def ort_session(path: str, threads: int):
    """An ONNX Runtime CPU session of the file at ``path`` running ``threads``
    threads in its operators (as PyTorch is given) and one between them;
    without options it takes one thread per core, whatever
    ``OMP_NUM_THREADS`` says, and the latencies would not compare."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options,
                                providers=['CPUExecutionProvider'])


class Exported:
    """The models and the input of one export: ``task`` (mmdeploy's task
    processor), ``model`` (PyTorch, eval), ``data`` (the pre-processed
    export image: ``inputs`` and ``data_samples``)."""

    def __init__(self, model_cfg: Config, deploy_cfg: Config,
                 checkpoint: str, image):
        from mmdeploy.apis import build_task_processor
        from mmdeploy.utils import get_input_shape

        from . import rewriters  # noqa: F401  (registers ours)
        model_cfg = copy.deepcopy(model_cfg)
        # mmdeploy reads ``test_pipeline``; tools/test.py runs the loader's
        model_cfg.test_pipeline = model_cfg.test_dataloader.dataset.pipeline
        self.model_cfg, self.deploy_cfg = model_cfg, deploy_cfg
        self.task = build_task_processor(model_cfg, deploy_cfg, 'cpu')
        self.model = self.task.build_pytorch_model(checkpoint)
        self.data, _ = self.task.create_input(
            image, get_input_shape(deploy_cfg),
            data_preprocessor=self.model.data_preprocessor)

    @property
    def inputs(self) -> torch.Tensor:
        """The pre-processed image as the PyTorch model takes it (padded
        for a detector)."""
        inputs = self.data['inputs']
        return inputs[0] if isinstance(inputs, (list, tuple)) else inputs

    @property
    def graph_input(self) -> torch.Tensor:
        """The pre-processed image as the graph takes it: a detector's
        without the padding (the graph pads)."""
        if self.segmentation:
            return self.inputs
        h, w = self.data['data_samples'][0].img_shape
        return self.inputs[..., :h, :w].contiguous()

    def samples(self):
        """A fresh copy of the export image's data samples."""
        return copy.deepcopy(self.data['data_samples'])

    @property
    def segmentation(self) -> bool:
        return is_segmentor(self.model_cfg)

    def torch_predictor(self) -> Callable[[], object]:
        """Runs the PyTorch model on the image: its data sample with
        ``pred_instances`` or ``pred_sem_seg`` (in the original image)."""

        def run():
            with torch.no_grad():
                return self.model(self.inputs, self.samples(),
                                  mode='predict')[0]

        return run

    def torch_candidates(self):
        """The PyTorch model's detections before the final NMS (its IoU
        threshold raised to 1, no cap), to check NMS ties against."""
        test_cfg = self.model.roi_head.test_cfg
        saved = copy.deepcopy(test_cfg)
        test_cfg.nms.iou_threshold = 1.0
        test_cfg.max_per_img = 10**6
        try:
            return self.torch_predictor()().pred_instances
        finally:
            self.model.roi_head.test_cfg = saved

    def torch_mask_probabilities(self):
        """The PyTorch model's detections with their mask probabilities
        pasted in the image before the threshold (mmdet's uint8, x 255)."""
        test_cfg = self.model.roi_head.test_cfg
        threshold = test_cfg.mask_thr_binary
        test_cfg.mask_thr_binary = -1
        try:
            return self.torch_predictor()().pred_instances
        finally:
            test_cfg.mask_thr_binary = threshold

    def onnx_mask_probabilities(self, outputs):
        """The graph's ``outputs`` as detections with their mask
        probabilities pasted in the image before the threshold."""
        return detections(outputs, self.samples()[0].metainfo,
                          probabilities=True)

    def onnx_stages(self, path: str):
        """The ONNX file in ONNX Runtime (CPU) on the image, as two stages
        timed apart: ``graph()`` (the session's run, its raw outputs) and
        ``post(outputs)``, the post-processing a deployment does - for
        detections :mod:`.postprocess` (boxes back to the original image,
        masks pasted), for logits mmseg's own (resized to the original
        image, argmax). ``post`` returns the data sample."""
        session = ort_session(path, torch.get_num_threads())
        feed = {INPUT: self.graph_input.numpy()}

        def graph():
            return session.run(None, feed)

        if self.segmentation:
            def post(outputs):
                return self.model.postprocess_result(
                    torch.from_numpy(outputs[0]), self.samples())[0]
        else:
            def post(outputs):
                sample = self.samples()[0]
                sample.pred_instances = detections(outputs, sample.metainfo)
                return sample
        return graph, post

    def onnx_predictor(self, path: str) -> Callable[[], object]:
        """Both stages of :meth:`onnx_stages` in one call."""
        graph, post = self.onnx_stages(path)
        return lambda: post(graph())

    def export(self, path: str) -> None:
        """Write the ONNX graph to ``path`` (TorchScript-based exporter:
        mmdeploy's rewriters and symbolics hook into it)."""
        from mmdeploy.core import patch_model
        from mmdeploy.utils import IR, get_onnx_config
        onnx = get_onnx_config(self.deploy_cfg)
        backend = self.deploy_cfg.backend_config.type
        patched = patch_model(self.model, cfg=self.deploy_cfg,
                              backend=backend, ir=IR.ONNX)
        # the exporter fills in a forward's defaults as graph inputs: the
        # graph's only input is the image tensor
        # (eval: the exporter puts the wrapper back in its own mode after,
        # and a new module's is training)
        graph = _ImageOnly(patched, self.samples()).eval()
        # the tracer warns of every Python value it freezes into the graph
        # (the fixed sizes of a static export, mmdeploy's own code)
        with _rewriting(self.deploy_cfg, backend, onnx.opset_version), \
                torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(
                graph, (self.graph_input, ), path, dynamo=False,
                export_params=True, input_names=onnx.input_names,
                output_names=onnx.output_names,
                opset_version=onnx.opset_version,
                dynamic_axes=onnx.get('dynamic_axes'),
                keep_initializers_as_inputs=False)


@contextlib.contextmanager
def _rewriting(deploy_cfg: Config, backend: str, opset: int):
    """mmdeploy's ``RewriterContext``; on leaving it, torch.fx's table of
    wrapped functions is put back first: mmdeploy 1.3.1 pops it as a list,
    and torch >= 2.4 keeps a dict (``KeyError: -1``)."""
    import torch.fx._symbolic_trace as fx_trace
    from mmdeploy.core import RewriterContext
    from mmdeploy.utils import IR
    saved = dict(fx_trace._wrapped_fns_to_patch)
    context = RewriterContext(cfg=deploy_cfg, backend=backend, ir=IR.ONNX,
                              opset=opset)
    context.__enter__()
    try:
        yield
    finally:
        fx_trace._wrapped_fns_to_patch.clear()
        fx_trace._wrapped_fns_to_patch.update(saved)
        context.__exit__(None, None, None)


class _ImageOnly(torch.nn.Module):

    def __init__(self, model, data_samples):
        super().__init__()
        self.model, self.data_samples = model, data_samples

    def forward(self, inputs):
        return self.model(inputs, self.data_samples, mode='predict')


def graph_ops(path: str) -> Tuple[int, List[str], List[str]]:
    """The ONNX file's default-domain opset, its op types, and the op types
    outside the standard domain (which a plain runtime cannot load)."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    opset = next(o.version for o in model.opset_import
                 if o.domain in ('', 'ai.onnx'))
    ops = sorted({n.op_type for n in model.graph.node})
    custom = sorted({f'{n.domain}::{n.op_type}' for n in model.graph.node
                     if n.domain not in ('', 'ai.onnx')})
    return opset, ops, custom
