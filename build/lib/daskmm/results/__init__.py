"""daskmm.results"""
