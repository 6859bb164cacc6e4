"""daskmm.kernels"""
