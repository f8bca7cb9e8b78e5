"""Image quality measures shared by training (losses, logged PSNR) and evaluation (metrics): PSNR, SSIM
and the perceptual distances."""
