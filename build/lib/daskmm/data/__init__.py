"""daskmm.data"""
