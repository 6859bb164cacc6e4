"""daskmm.distributed"""
