# Time lme4::lmer on a data file; called by bench_lmm.py.
#
# Usage: Rscript benchmarks/bench_lmer.R DATA FORMULA REPEATS [REML]
#
# DATA is a Parquet file (read with arrow) or a CSV file (read with data.table::fread when
# installed, else read.csv). Reading the file and R's start-up are not timed: only the
# lmer() call is, with system.time, REPEATS times in this one R session (a gc() runs before each
# call, outside the timing). Prints one line per fact, for bench_lmm.py to parse:
#   READER <arrow|fread|read.csv>
#   LME4 <version>
#   RUN <i> <elapsed seconds>
#   OBJECTIVE <REML criterion, or deviance for ML>
#   THETA <values...>
#   BETA <values...>
#   MESSAGE <convergence message>   (zero or more)

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 3) stop("usage: Rscript bench_lmer.R DATA FORMULA REPEATS [REML]")
path <- args[1]
form <- as.formula(args[2])
repeats <- as.integer(args[3])
reml <- if (length(args) >= 4) as.logical(args[4]) else TRUE

suppressPackageStartupMessages(library(lme4))

if (grepl("\\.parquet$", path)) {
  reader <- "arrow"
  d <- as.data.frame(arrow::read_parquet(path))
} else if (requireNamespace("data.table", quietly = TRUE)) {
  reader <- "fread"
  d <- as.data.frame(data.table::fread(path))
} else {
  reader <- "read.csv"
  d <- read.csv(path)
}
cat("READER", reader, "\n")
cat("LME4", as.character(packageVersion("lme4")), "\n")

fit <- NULL
for (i in seq_len(repeats)) {
  invisible(gc())
  tm <- system.time(fit <- lmer(form, data = d, REML = reml))
  cat(sprintf("RUN %d %.6f\n", i, tm[["elapsed"]]))
}

obj <- if (reml) REMLcrit(fit) else deviance(fit)
cat(sprintf("OBJECTIVE %.15g\n", obj))
cat("THETA", sprintf("%.15g", getME(fit, "theta")), "\n")
cat("BETA", sprintf("%.15g", fixef(fit)), "\n")
for (m in fit@optinfo$conv$lme4$messages) cat("MESSAGE", gsub("\n", " ", m), "\n")
