# bam timings for bench_gam.py: reads the raw float64 columns bench_gam.py wrote, then fits
# REPEATS times each with bam(discrete = TRUE, nthreads = 2) and bam(discrete = FALSE).
#   Rscript bench_gam.R DIR ROWS FORMULA REPEATS_DISCRETE REPEATS_EXACT
# Prints "RUN tool seconds score" per fit; reading the data is not timed.
suppressPackageStartupMessages(library(mgcv))
a <- commandArgs(trailingOnly = TRUE)
dir <- a[1]; n <- as.integer(a[2]); form <- as.formula(a[3])
rd <- as.integer(a[4]); re <- as.integer(a[5])
cols <- sub("\\.bin$", "", list.files(dir, pattern = "\\.bin$"))
d <- as.data.frame(lapply(setNames(cols, cols), function(c)
  readBin(file.path(dir, paste0(c, ".bin")), "double", n)))
if ("g" %in% names(d)) d$g <- factor(d$g)
for (i in seq_len(rd)) {
  t <- system.time(b <- bam(form, data = d, discrete = TRUE, nthreads = 2))[["elapsed"]]
  cat("RUN bam_discrete", t, sprintf("%.6f", b$gcv.ubre), "\n")
}
for (i in seq_len(re)) {
  t <- system.time(b <- bam(form, data = d, discrete = FALSE))[["elapsed"]]
  cat("RUN bam_exact", t, sprintf("%.6f", b$gcv.ubre), "\n")
}
