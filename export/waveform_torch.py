"""The waveform frontend and waveform model as torch modules (imports torch: export only).

:mod:`dymn_edge.export.waveform` holds the torch-free side (STFT forms, MAC counts, the
graph signature, MediaPipe metadata) and builds these through its factory functions, so
importing it costs no torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from dymn_edge.export.waveform import STFT_FORMS, _support, _used_bins
from dymn_edge.registry import FrontendConfig


class WaveformFrontend(nn.Module):
    """(B, N) float32 waveform -> (B, 1, n_mels, 1 + (N - 1) // hop) log-mel."""

    def __init__(self, fc: FrontendConfig = FrontendConfig(), stft: str = "dft_conv") -> None:
        super().__init__()
        if stft not in STFT_FORMS:
            raise ValueError(f"unknown STFT form '{stft}' (choose from: {', '.join(STFT_FORMS)})")
        self.fc, self.stft = fc, stft
        first, win = _support(fc)
        self.span = win.size
        # the first frame's support starts this far before pre-emphasised sample 0
        self.pad = fc.n_fft // 2 - first
        used, bank = _used_bins(fc)
        self.register_buffer("mel_bank", torch.from_numpy(bank.astype(np.float32)))  # (M, K)
        # reflect padding as products with reversal matrices: exact in float32 (one 1.0 per
        # column), and matmuls that XNNPACK takes, where the converter turns
        # F.pad(mode="reflect") into index arithmetic and a GATHER_ND that it does not. The
        # pad (399) is reversed as (a, b) blocks, R_a @ X @ R_b: two tiny matrices instead of
        # one of pad^2 floats (0.6 MB per use in the file)
        self.rev_a = next((a for a in range(int(math.isqrt(self.pad)), 0, -1) if self.pad % a == 0), 1)
        self.rev_b = self.pad // self.rev_a
        for name, n in (("rev_rows", self.rev_a), ("rev_cols", self.rev_b)):
            self.register_buffer(name, torch.from_numpy(np.eye(n, dtype=np.float32)[::-1].copy()))
        if stft == "dft_conv":
            # frame position first + j (j in the support) carries phase e^{-2 pi i k (first + j) / n_fft}
            j = np.arange(self.span, dtype=np.float64)
            phase = 2.0 * np.pi * np.outer(used, first + j) / fc.n_fft  # (K, span)
            w = np.concatenate([np.cos(phase) * win, -np.sin(phase) * win])  # (2K, span)
            self.register_buffer("dft", torch.from_numpy(w.astype(np.float32))[:, None, :])
            self.bins = int(used.size)
        elif stft == "radix32":
            self._init_radix(fc, first, win, used, bank)
        else:
            self.register_buffer("window", torch.from_numpy(win.astype(np.float32)))
            self.register_buffer("used", torch.from_numpy(used.astype(np.int64)))
            self.first = first

    def _reversed(self, x):
        """(B, pad) -> the same samples in reverse order (see __init__)."""
        blocks = x.reshape(x.shape[0], self.rev_a, self.rev_b)
        return torch.matmul(torch.matmul(self.rev_rows, blocks), self.rev_cols).reshape(x.shape[0], self.pad)

    def _init_radix(self, fc, first, win, used, bank) -> None:
        # n = r * n2 + n1 (frame position), k = k1 + r * k2 (bin): stage 1 is an r-point
        # DFT over n2 (the same (2r, r) matrix for every n1), stage 2 an r-point DFT over
        # n1 with the twiddles folded in (one (2r, 2 k2) matrix per k1).
        n_fft = fc.n_fft
        r = int(round(math.sqrt(n_fft)))
        if r * r != n_fft:
            raise ValueError(f"radix32 needs a square n_fft, got {n_fft}")
        self.radix = r
        self.k2 = int(used.max()) // r + 1  # bins up to the highest one a mel band weighs
        full = np.zeros(n_fft, dtype=np.float64)
        full[first:first + self.span] = win
        self.register_buffer("window", torch.from_numpy(full.astype(np.float32)))
        n2 = np.arange(r)
        k1 = np.arange(r)
        ph1 = 2.0 * np.pi * np.outer(k1, n2) / r  # (k1, n2)
        s1 = np.concatenate([np.cos(ph1), -np.sin(ph1)])  # (2r: re | im of k1, r: n2)
        self.register_buffer("stage1", torch.from_numpy(s1.astype(np.float32)))
        n1 = np.arange(r)[None, :, None]
        kk = k1[:, None, None] + r * np.arange(self.k2)[None, None, :]  # (k1, 1, k2)
        ph2 = 2.0 * np.pi * n1 * kk / n_fft  # (k1, n1, k2)
        g_re, g_im = np.cos(ph2), -np.sin(ph2)
        # [a_re, a_im] (2r) @ [[g_re, g_im], [-g_im, g_re]] -> [x_re, x_im] (2 k2)
        s2 = np.concatenate([np.concatenate([g_re, g_im], axis=2),
                             np.concatenate([-g_im, g_re], axis=2)], axis=1)  # (r, 2r, 2k2)
        self.register_buffer("stage2", torch.from_numpy(s2.astype(np.float32)))
        full_bank = np.zeros((fc.n_mels, r * self.k2))
        full_bank[:, used] = bank
        # power comes out as (k1, k2); bin k1 + r k2 -> row k1 * k2count + k2
        perm = (k1[:, None] + r * np.arange(self.k2)[None, :]).reshape(-1)
        self.register_buffer("mel_bank_radix",
                             torch.from_numpy(full_bank[:, perm].T.astype(np.float32)))  # (r*k2, M)

    def _radix_power_mel(self, y):
        """(B, 1, pad + L + pad) reflect-padded signal -> (B, M, T) mel power."""
        fc, r, hop = self.fc, self.radix, self.fc.hop_length
        b = y.shape[0]
        n_pre = y.shape[-1] - 2 * self.pad
        t = 1 + n_pre // hop
        # frame t = padded positions t*hop - first .. + n_fft: shift by `first` zeros; blocks of hop
        blocks_per_frame = -(-fc.n_fft // hop)
        lead = fc.n_fft // 2 - self.pad  # == first
        z = torch.nn.functional.pad(y[:, 0], (lead, blocks_per_frame * hop))
        z = z[:, :(t + blocks_per_frame - 1) * hop].reshape(b, t + blocks_per_frame - 1, hop)
        frames = torch.cat([z[:, i:i + t] for i in range(blocks_per_frame)], dim=-1)[..., :fc.n_fft]
        frames = (frames * self.window).reshape(b * t, r, r)  # (BT, n2, n1)
        a = torch.matmul(self.stage1, frames)  # (BT, 2r [re|im of k1], n1)
        a = a.reshape(b * t, 2, r, r).permute(2, 0, 1, 3).reshape(r, b * t, 2 * r)  # (k1, BT, [re|im] n1)
        x = torch.bmm(a, self.stage2)  # (k1, BT, [re|im] k2)
        re, im = x[..., :self.k2], x[..., self.k2:]
        power = (re * re + im * im).permute(1, 0, 2).reshape(b * t, r * self.k2)
        mel = torch.matmul(power, self.mel_bank_radix)  # (BT, M)
        return mel.reshape(b, t, fc.n_mels).transpose(1, 2)

    def forward(self, wave):
        fc = self.fc
        y = wave[:, 1:] - fc.preemphasis * wave[:, :-1]
        left = self._reversed(y[:, 1:self.pad + 1])  # y[pad], ..., y[1]
        right = self._reversed(y[:, -self.pad - 1:-1])  # y[-2], ..., y[-pad-1]
        y = torch.cat([left, y, right], dim=1)[:, None, :]
        if self.stft == "radix32":
            mel = self._radix_power_mel(y)
            out = (torch.log(mel + fc.log_offset) + fc.norm_shift) / fc.norm_scale
            return out[:, None]
        if self.stft == "dft_conv":
            spec = torch.nn.functional.conv1d(y, self.dft, stride=fc.hop_length)  # (B, 2K, T)
            re, im = spec[:, :self.bins], spec[:, self.bins:]
            power = re * re + im * im  # (B, K, T)
        else:
            frames = y[:, 0].unfold(-1, self.span, fc.hop_length) * self.window  # (B, T, span)
            frames = torch.nn.functional.pad(frames, (self.first, fc.n_fft - self.first - self.span))
            spec = torch.fft.rfft(frames, dim=-1)
            power = (spec.real ** 2 + spec.imag ** 2).index_select(-1, self.used).transpose(1, 2)
        mel = torch.matmul(self.mel_bank, power)  # (B, M, T)
        out = (torch.log(mel + fc.log_offset) + fc.norm_shift) / fc.norm_scale
        return out[:, None]

class WaveformModel(nn.Module):
    """Waveform -> (probabilities, embedding): frontend, export-form model, activation."""

    def __init__(self, model: nn.Module, fc: FrontendConfig, activation: str,
                 stft: str = "dft_conv") -> None:
        super().__init__()
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"unknown activation '{activation}'")
        self.frontend = WaveformFrontend(fc, stft)
        self.model = model
        self.activation = activation

    def forward(self, wave):
        logits, embedding = self.model(self.frontend(wave))
        probs = torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=-1)
        return probs, embedding
