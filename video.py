"""
Super-resolving a video for super_resolve.py: decoded with PyAV (FFmpeg), its frames upscaled in batches through the
same inference.Upscaler as images, encoded at the input's frame times, its audio copied. A module of its own so that
the image path reads without it, and PyAV is imported only when a video is given.
"""

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import inference
from images import InputError
from outputs import atomic_path
from utils import convert_image

VIDEO_EXTENSIONS = ('.mp4', '.mkv', '.mov', '.avi', '.webm', '.m4v')


@torch.inference_mode()
def super_resolve_video(upscaler, in_path, out_path, batch_size=4, note=print, progress=True):
    """Frame by frame: h264 (libx264) when PyAV's FFmpeg has it, else MPEG-4 Part 2; VP9 for .webm; the audio
    stream is copied packet by packet, not re-encoded (dropped with a note where the container cannot hold it).
    Written atomically. Returns the number of frames written."""
    import av  # only videos need it

    out_path = Path(out_path)
    try:
        with av.open(os.fspath(in_path)) as source, atomic_path(out_path) as tmp_path:
            if not source.streams.video:
                raise InputError(f'{in_path}: no video stream')
            video_in = source.streams.video[0]
            video_in.thread_type = 'AUTO'
            with av.open(tmp_path, 'w') as target:
                encoder = FrameEncoder(upscaler, target, video_in, out_path, batch_size)
                audio_in = _copied_audio(source, target, out_path, note)
                bar = tqdm(total=video_in.frames or None, unit='frame', desc=Path(in_path).name, leave=False,
                           disable=not progress)
                for packet in source.demux([video_in] + ([audio_in] if audio_in is not None else [])):
                    if packet.stream is video_in:
                        for frame in packet.decode():  # the final empty packet flushes the decoder
                            bar.update(encoder.add(frame))
                    elif packet.dts is not None:  # audio: copy (skip the demuxer's empty flush packet)
                        packet.stream = target.streams.audio[0]
                        target.mux(packet)
                bar.update(encoder.finish())
                bar.close()
            if encoder.n_frames == 0:
                raise InputError(f'{in_path}: no video frames could be decoded')
        return encoder.n_frames
    except av.FFmpegError as e:
        raise InputError(f'{in_path}: cannot decode or encode this video ({e})') from None


def _copied_audio(source, target, out_path, note):
    """The input's audio stream, with a stream for it added to `target`; None (with a note) where the container
    cannot hold its codec, or where there is no audio."""
    if not source.streams.audio:
        return None
    audio_in = source.streams.audio[0]
    if audio_in.codec_context.name not in target.supported_codecs:
        note(f'note: {out_path}: {out_path.suffix} cannot hold {audio_in.codec_context.name} audio; audio dropped '
             f'(use .mkv)')
        return None
    target.add_stream_from_template(audio_in)
    return audio_in


class FrameEncoder:
    """Collects decoded frames, super-resolves them in batches and muxes them into the output video stream at
    the input frames' times."""

    def __init__(self, upscaler, target, video_in, out_path, batch_size):
        import av
        self.upscaler, self.target, self.batch_size = upscaler, target, batch_size
        frame_rate = video_in.average_rate or video_in.guessed_rate or 25
        if out_path.suffix.lower() == '.webm':  # WebM holds only VP8/VP9/AV1
            if 'libvpx-vp9' not in av.codecs_available:
                raise InputError(f'{out_path}: this FFmpeg has no VP9 encoder (libvpx-vp9) for .webm; use .mp4 or .mkv')
            codec = 'libvpx-vp9'
        else:
            codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
        try:
            self.stream = target.add_stream(codec, rate=frame_rate)
        except ValueError as e:  # a container that cannot hold the codec
            raise InputError(f'{out_path}: {out_path.suffix} cannot hold {codec} video ({e}); use .mp4 or '
                             f'.mkv') from None
        s = upscaler.scaling_factor
        self.stream.width, self.stream.height, self.stream.pix_fmt = video_in.width * s, video_in.height * s, 'yuv420p'
        # near-transparent quality: constant rate factor 18 for x264 and VP9 (b=0: quality alone decides);
        # MPEG-4 at quantiser 2 (ffmpeg -q:v 2)
        self.stream.options = ({'crf': '18'} if codec == 'libx264' else {'crf': '18', 'b': '0'}
                               if codec == 'libvpx-vp9' else {'flags': 'qscale', 'global_quality': str(2 * 118)})
        self.frame_period = 1 / Fraction(frame_rate)  # the encoder's time base
        self.frames, self.last_pts, self.n_frames = [], -1, 0

    def add(self, frame):
        """Queue one decoded frame; returns the number of frames encoded now (0, or a batch)."""
        self.frames.append(frame)
        return self._encode() if len(self.frames) == self.batch_size else 0

    def finish(self):
        """Encode the frames still queued and flush the encoder; returns how many were encoded."""
        n = self._encode() if self.frames else 0
        self.target.mux(self.stream.encode(None))
        return n

    def _encode(self):
        import av
        rgb = np.stack([frame.to_ndarray(format='rgb24') for frame in self.frames])  # (N, h, w, 3) uint8
        lr_imgs = convert_image(torch.from_numpy(rgb).permute(0, 3, 1, 2).float(), '[0, 255]', 'imagenet-norm')
        sr_imgs = upscale_frames(self.upscaler, lr_imgs)  # (N, 3, H, W) in [-1, 1]
        sr_imgs = convert_image(sr_imgs, '[-1, 1]', '[0, 255]').clamp_(0, 255).round_().to(torch.uint8)
        for frame, sr_img in zip(self.frames, sr_imgs.permute(0, 2, 3, 1).numpy()):
            out_frame = av.VideoFrame.from_ndarray(sr_img, format='rgb24')
            # the input frame's time in 1/fps units, kept strictly increasing as encoders require
            pts = self.last_pts + 1
            if frame.pts is not None and frame.time_base is not None:
                pts = max(pts, round(frame.pts * frame.time_base / self.frame_period))
            out_frame.pts, out_frame.time_base, self.last_pts = pts, self.frame_period, pts
            self.target.mux(self.stream.encode(out_frame))
        n, self.frames = len(self.frames), []
        self.n_frames += n
        return n


def upscale_frames(upscaler, lr_imgs):
    """(N, 3, h, w) ImageNet-normalised frames -> (N, 3, h * s, w * s) in [-1, 1]: as one batch when a frame fits
    in a tile, else (or after out-of-memory) one frame at a time, tiled."""
    if upscaler.tile is None or max(lr_imgs.shape[2:]) <= upscaler.tile:
        try:
            return upscaler.forward(lr_imgs)
        except RuntimeError as e:
            if not inference.is_out_of_memory(e):
                raise
    return torch.stack([upscaler.upscale(lr_img) for lr_img in lr_imgs])
