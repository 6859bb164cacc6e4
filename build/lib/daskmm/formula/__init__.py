"""daskmm.formula"""
