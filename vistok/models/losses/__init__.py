from .reconstruction import CharbonnierLoss, L1Loss, MSELoss, PixelLoss

__all__ = ['PixelLoss', 'L1Loss', 'MSELoss', 'CharbonnierLoss']
