# Reference outputs from real R for LMM from Scratch.
#
# Run from the repository root, with address-space randomisation off (Linux's setarch; without it lme4's fits of
# crossed factors vary between runs at 1e-7 relative, and more near a boundary: see tests/test_r_live.py):
#     setarch -R Rscript data/reference/make_reference.R [ROOT]
# ROOT (default ".") is where data/ is written; tests/test_r_live.py passes a temporary folder to compare a
# fresh run of R with the stored files.
# Needs R with lme4, nlme and lmerTest (Debian: apt-get install -y r-cran-lme4 r-cran-nlme r-cran-lmertest).
#
# Writes
#   data/toy.csv, data/sleepstudy.csv, data/grouseticks.csv, data/singular.csv   the datasets
#   data/orthodont.csv, data/chickweight.csv, data/oxboys.csv   (random slopes, lmm)
#   data/penicillin.csv, data/pastes.csv, data/oats.csv, data/cake.csv, data/insteval.csv   (crossed and nested)
#   data/reference/r_reference.csv      every number, long format: dataset, model, quantity, term, value
#   data/reference/*.txt                R's own printed summaries, shown beside the Python results
#   data/reference/versions.txt         R and package versions that produced them
# Neither the notebooks nor the tests need R: they read these files.

suppressPackageStartupMessages({
  library(lme4)
  library(nlme)
  library(lmerTest)
})

args <- commandArgs(trailingOnly = TRUE)
root <- if (length(args) >= 1L) args[1] else "."
out_dir <- file.path(root, "data", "reference")
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)
rows <- list()
emit <- function(dataset, model, quantity, term, value) {
  value <- as.numeric(value)
  if (is.null(term)) term <- ""
  if (length(term) == 1L && length(value) > 1L) term <- rep(term, length(value))
  rows[[length(rows) + 1L]] <<- data.frame(dataset = dataset, model = model, quantity = quantity,
                                           term = term, value = value, stringsAsFactors = FALSE)
}
save_text <- function(name, expr_output) {
  writeLines(expr_output, file.path(out_dir, paste0(name, ".txt")))
}
write_data <- function(df, name) {
  write.csv(df, file.path(root, "data", paste0(name, ".csv")), row.names = FALSE, quote = FALSE)
}

# ---- helpers that record one fitted model ---------------------------------------------------
record_lmer <- function(dataset, model, fit) {
  s <- summary(fit)
  cf <- coef(s)
  emit(dataset, model, "beta", rownames(cf), cf[, "Estimate"])
  emit(dataset, model, "se", rownames(cf), cf[, "Std. Error"])
  emit(dataset, model, "t", rownames(cf), cf[, "t value"])
  if ("df" %in% colnames(cf)) {  # lmerTest: Satterthwaite
    emit(dataset, model, "df", rownames(cf), cf[, "df"])
    emit(dataset, model, "p", rownames(cf), cf[, "Pr(>|t|)"])
  }
  vc <- as.data.frame(VarCorr(fit))
  emit(dataset, model, "sigma", "", sigma(fit))
  emit(dataset, model, "sigma_s", "", vc$sdcor[1])
  emit(dataset, model, "var_resid", "", vc$vcov[nrow(vc)])
  emit(dataset, model, "var_s", "", vc$vcov[1])
  emit(dataset, model, "loglik", "", as.numeric(logLik(fit)))
  emit(dataset, model, "aic", "", AIC(fit))
  emit(dataset, model, "bic", "", BIC(fit))
  emit(dataset, model, "singular", "", as.numeric(isSingular(fit)))
  emit(dataset, model, "nobs", "", nobs(fit))
  re <- ranef(fit)[[1]]
  emit(dataset, model, "ranef", rownames(re), re[, 1])
  v <- as.matrix(vcov(fit))
  emit(dataset, model, "vcov", as.vector(outer(rownames(v), colnames(v), paste, sep = ":")), as.vector(v))
}

record_lme <- function(dataset, model, fit) {
  tt <- summary(fit)$tTable
  emit(dataset, model, "beta", rownames(tt), tt[, "Value"])
  emit(dataset, model, "se", rownames(tt), tt[, "Std.Error"])
  emit(dataset, model, "df", rownames(tt), tt[, "DF"])
  emit(dataset, model, "t", rownames(tt), tt[, "t-value"])
  emit(dataset, model, "p", rownames(tt), tt[, "p-value"])
  emit(dataset, model, "sigma", "", fit$sigma)
  emit(dataset, model, "sigma_s", "", as.numeric(VarCorr(fit)[1, "StdDev"]))
  emit(dataset, model, "loglik", "", as.numeric(logLik(fit)))
}

record_htest <- function(dataset, model, h) {
  emit(dataset, model, "t", "", h$statistic)
  emit(dataset, model, "df", "", h$parameter)
  emit(dataset, model, "p", "", h$p.value)
  emit(dataset, model, "estimate", names(h$estimate), h$estimate)
  emit(dataset, model, "ci_lower", "", h$conf.int[1])
  emit(dataset, model, "ci_upper", "", h$conf.int[2])
}

# lmerTest's summary gives Satterthwaite df and p on top of lme4's numbers.
fit_both <- function(formula, data, reml) {
  # Build the call so that printed summaries show the real formula and data name.
  eval(call("lmer", formula, data = substitute(data), REML = reml), parent.frame())
}

# ---- the toy data of the article ------------------------------------------------------------
toy <- data.frame(Ind = c(1, 1, 2, 2), Treat = c(0, 1, 0, 1), Resp = c(10, 25, 3, 6))
write_data(toy, "toy")
toy$IndF <- factor(toy$Ind)

ols <- lm(Resp ~ Treat, data = toy)
so <- summary(ols)
emit("toy", "lm", "beta", rownames(coef(so)), coef(so)[, "Estimate"])
emit("toy", "lm", "se", rownames(coef(so)), coef(so)[, "Std. Error"])
emit("toy", "lm", "t", rownames(coef(so)), coef(so)[, "t value"])
emit("toy", "lm", "p", rownames(coef(so)), coef(so)[, "Pr(>|t|)"])
emit("toy", "lm", "sigma", "", so$sigma)
emit("toy", "lm", "df_resid", "", ols$df.residual)
emit("toy", "lm", "loglik", "", as.numeric(logLik(ols)))
save_text("toy_lm", capture.output(print(so)))

toy_ml <- fit_both(Resp ~ Treat + (1 | IndF), toy, reml = FALSE)
toy_reml <- fit_both(Resp ~ Treat + (1 | IndF), toy, reml = TRUE)
record_lmer("toy", "lmer_ML", toy_ml)
record_lmer("toy", "lmer_REML", toy_reml)
save_text("toy_lmer_ML", capture.output(print(summary(as(toy_ml, "lmerMod")))))
save_text("toy_lmer_REML", capture.output(print(summary(as(toy_reml, "lmerMod")))))
save_text("toy_lmerTest_ML", capture.output(print(summary(toy_ml))))
save_text("toy_lmerTest_REML", capture.output(print(summary(toy_reml))))

# Cell-means coding, as in the article: beta1 = untreated mean, beta2 = treated mean.
toy$TreatF <- factor(toy$Treat)
toy_cm <- lme4::lmer(Resp ~ 0 + TreatF + (1 | IndF), data = toy, REML = FALSE)
record_lmer("toy", "lmer_ML_cellmeans", toy_cm)

toy_lme_ml <- lme(Resp ~ Treat, random = ~ 1 | IndF, data = toy, method = "ML")
toy_lme_reml <- lme(Resp ~ Treat, random = ~ 1 | IndF, data = toy, method = "REML")
record_lme("toy", "lme_ML", toy_lme_ml)
record_lme("toy", "lme_REML", toy_lme_reml)
save_text("toy_lme_ML", capture.output(print(summary(toy_lme_ml))))
save_text("toy_lme_REML", capture.output(print(summary(toy_lme_reml))))

# ---- nlme under ML: which outputs carry the n/(n-p) rescaling (notebooks 03 and 08) ----------
# summary.lme() with its default adjustSigma = TRUE multiplies sigma by sqrt(n/(n-p)) for an ML fit, and with it
# the printed standard errors, t and p; vcov() and intervals() use the unadjusted ML sigma (lme4's numbers).
toy_lme_ml_noadj <- summary(toy_lme_ml, adjustSigma = FALSE)
tt <- toy_lme_ml_noadj$tTable
for (q in c("Std.Error", "t-value", "p-value")) {
  emit("toy", "lme_ML_noadjust", c("Std.Error" = "se", "t-value" = "t", "p-value" = "p")[[q]], rownames(tt), tt[, q])
}
v <- as.matrix(vcov(toy_lme_ml))
emit("toy", "lme_ML", "vcov", as.vector(outer(rownames(v), colnames(v), paste, sep = ":")), as.vector(v))
iv <- intervals(toy_lme_ml, which = "fixed")$fixed
emit("toy", "lme_ML_intervals", "ci_lower", rownames(iv), iv[, "lower"])
emit("toy", "lme_ML_intervals", "ci_upper", rownames(iv), iv[, "upper"])
save_text("toy_lme_ML_noadjust", capture.output(print(toy_lme_ml_noadj)))
save_text("toy_lme_ML_vcov", capture.output(print(vcov(toy_lme_ml))))
# ---- end of the nlme block --------------------------------------------------------------------

# t-tests: paired, Welch on raw Resp, and Student/Welch on Resp_std.
untr <- toy$Resp[toy$Treat == 0]
trt <- toy$Resp[toy$Treat == 1]
paired <- t.test(trt, untr, paired = TRUE)
welch <- t.test(Resp ~ Treat, data = transform(toy, Treat = factor(Treat, levels = c(1, 0))))
toy$Resp_std <- toy$Resp - ave(ifelse(toy$Treat == 0, toy$Resp, 0), toy$Ind, FUN = sum)
std_test <- t.test(toy$Resp_std[toy$Treat == 1], toy$Resp_std[toy$Treat == 0])
record_htest("toy", "t_paired", paired)
record_htest("toy", "t_welch_raw", welch)
record_htest("toy", "t_welch_std", std_test)
save_text("toy_t_paired", capture.output(print(paired)))
save_text("toy_t_welch_raw", capture.output(print(welch)))
save_text("toy_t_welch_std", capture.output(print(std_test)))

# Likelihood-ratio test for Treat on ML fits (anova refits with ML anyway).
toy_ml0 <- lme4::lmer(Resp ~ 1 + (1 | IndF), data = toy, REML = FALSE)
toy_ml1 <- lme4::lmer(Resp ~ Treat + (1 | IndF), data = toy, REML = FALSE)
record_lmer("toy", "lmer_ML_null", toy_ml0)
a <- anova(toy_ml0, toy_ml1)
emit("toy", "lrt_treat", "chisq", "", a$Chisq[2])
emit("toy", "lrt_treat", "df", "", a[["Df"]][2])
emit("toy", "lrt_treat", "p", "", a[["Pr(>Chisq)"]][2])
emit("toy", "lrt_treat", "aic", c("null", "full"), a$AIC)
save_text("toy_lrt_treat", capture.output(print(a)))

# Profile-likelihood confidence intervals (lme4's spline-interpolated profile).
ci <- suppressWarnings(confint(toy_ml1, method = "profile", oldNames = FALSE))
emit("toy", "lmer_ML_profile", "ci_lower", rownames(ci), ci[, 1])
emit("toy", "lmer_ML_profile", "ci_upper", rownames(ci), ci[, 2])
save_text("toy_profile_ci", capture.output(print(ci)))

# ---- sleepstudy (Belenky et al. 2003, as shipped with lme4) ---------------------------------
data("sleepstudy", package = "lme4")
write_data(sleepstudy[, c("Reaction", "Days", "Subject")], "sleepstudy")
for (reml in c(FALSE, TRUE)) {
  lab <- if (reml) "REML" else "ML"
  f <- fit_both(Reaction ~ Days + (1 | Subject), sleepstudy, reml)
  record_lmer("sleepstudy", paste0("lmer_", lab), f)
  save_text(paste0("sleepstudy_lmer_", lab), capture.output(print(summary(f))))
  fs <- fit_both(Reaction ~ Days + (Days | Subject), sleepstudy, reml)
  record_lmer("sleepstudy", paste0("lmer_slopes_", lab), fs)
  vc <- as.data.frame(VarCorr(fs))
  emit("sleepstudy", paste0("lmer_slopes_", lab), "varcorr",
       paste(vc$var1, ifelse(is.na(vc$var2), "", vc$var2), sep = ":"), vc$sdcor)
  save_text(paste0("sleepstudy_lmer_slopes_", lab), capture.output(print(summary(fs))))
}
# nlme under ML on real data (notebook 03): its SEs are lme4's times sqrt(n / (n - p)), here sqrt(180 / 178).
ss_lme_ml <- lme(Reaction ~ Days, random = ~ 1 | Subject, data = sleepstudy, method = "ML")
record_lme("sleepstudy", "lme_ML", ss_lme_ml)

# ---- grouseticks (lme4): 403 chicks in 118 broods of unequal size --------------------------
data("grouseticks", package = "lme4")
gt <- data.frame(logTicks = log(grouseticks$TICKS + 1), Year = grouseticks$YEAR,
                 Height = grouseticks$HEIGHT, Brood = grouseticks$BROOD)
write_data(gt, "grouseticks")
for (reml in c(FALSE, TRUE)) {
  lab <- if (reml) "REML" else "ML"
  f <- fit_both(logTicks ~ Year + Height + (1 | Brood), gt, reml)
  record_lmer("grouseticks", paste0("lmer_", lab), f)
  save_text(paste0("grouseticks_lmer_", lab), capture.output(print(summary(f))))
}
gt_ml <- lme4::lmer(logTicks ~ Year + Height + (1 | Brood), data = gt, REML = FALSE)
gt_ml0 <- lme4::lmer(logTicks ~ Year + (1 | Brood), data = gt, REML = FALSE)
a <- anova(gt_ml0, gt_ml)
emit("grouseticks", "lrt_height", "chisq", "", a$Chisq[2])
emit("grouseticks", "lrt_height", "df", "", a[["Df"]][2])
emit("grouseticks", "lrt_height", "p", "", a[["Pr(>Chisq)"]][2])

# ---- a boundary fit: little between-group variation, lme4 reports a singular fit ----------
set.seed(20261125)
sg <- data.frame(g = rep(sprintf("g%02d", 1:8), times = c(3, 4, 5, 6, 3, 4, 5, 6)))
sg$x <- round(runif(nrow(sg), 0, 10), 2)
sg$y <- round(2 + 0.5 * sg$x + rnorm(nrow(sg)), 3)
write_data(sg, "singular")
for (reml in c(FALSE, TRUE)) {
  lab <- if (reml) "REML" else "ML"
  f <- suppressMessages(fit_both(y ~ x + (1 | g), sg, reml))
  record_lmer("singular", paste0("lmer_", lab), f)
}

# ---- inference (notebooks 07-08): random effect vs lm, Wald and profile intervals ----------
# The random-effect LRT compares the LMM with the plain lm (anova() will not take an lm and an lmer together);
# the null value sigma_s^2 = 0 is on the boundary, so the reference distribution is 1/2 chi2_0 + 1/2 chi2_1.
record_ranef_lrt <- function(dataset, lmm_ml, lmm_reml, lm_fit) {
  for (lab in c("ML", "REML")) {
    lmm <- if (lab == "ML") lmm_ml else lmm_reml
    ll0 <- as.numeric(logLik(lm_fit, REML = (lab == "REML")))
    ll1 <- as.numeric(logLik(lmm))
    stat <- 2 * (ll1 - ll0)
    model <- paste0("lrt_ranef_", lab)
    emit(dataset, model, "loglik", c("lm", "lmm"), c(ll0, ll1))
    emit(dataset, model, "chisq", "", stat)
    emit(dataset, model, "p", "", 0.5 * pchisq(stat, df = 1, lower.tail = FALSE))
  }
}
record_ranef_lrt("toy", toy_ml1, toy_reml, lm(Resp ~ Treat, data = toy))
wald <- confint(toy_ml1, method = "Wald", parm = "beta_")
emit("toy", "lmer_ML_wald", "ci_lower", rownames(wald), wald[, 1])
emit("toy", "lmer_ML_wald", "ci_upper", rownames(wald), wald[, 2])
wald <- confint(toy_reml, method = "Wald", parm = "beta_")
emit("toy", "lmer_REML_wald", "ci_lower", rownames(wald), wald[, 1])
emit("toy", "lmer_REML_wald", "ci_upper", rownames(wald), wald[, 2])

# lme4's profile points (the signed root zeta at each value of one SD, the rest re-optimised), through which
# confint() interpolates a spline: a pointwise check of the profile itself.
emit_profile_points <- function(dataset, fit, which) {
  pr <- as.data.frame(suppressWarnings(profile(fit, which = which, signames = FALSE)))
  for (nm in unique(as.character(pr$.par))) {
    sub <- pr[pr$.par == nm, ]
    terms <- paste0(nm, "#", seq_len(nrow(sub)))
    emit(dataset, "lmer_ML_profile_points", "value", terms, sub[[nm]])
    emit(dataset, "lmer_ML_profile_points", "zeta", terms, sub$.zeta)
  }
}
emit_profile_points("toy", toy_ml1, "theta_")

gt_reml <- lme4::lmer(logTicks ~ Year + Height + (1 | Brood), data = gt, REML = TRUE)
record_ranef_lrt("grouseticks", gt_ml, gt_reml, lm(logTicks ~ Year + Height, data = gt))
wald <- confint(gt_ml, method = "Wald", parm = "beta_")
emit("grouseticks", "lmer_ML_wald", "ci_lower", rownames(wald), wald[, 1])
emit("grouseticks", "lmer_ML_wald", "ci_upper", rownames(wald), wald[, 2])
ci <- confint(gt_ml, parm = "theta_", method = "profile", oldNames = FALSE)
emit("grouseticks", "lmer_ML_profile", "ci_lower", rownames(ci), ci[, 1])
emit("grouseticks", "lmer_ML_profile", "ci_upper", rownames(ci), ci[, 2])
save_text("grouseticks_profile_ci", capture.output(print(ci)))

# ---- profile intervals for the fixed effects (notebook 08): lme4's spline through its profile points --------
# The toy's profile points for beta (zeta at each value of one coefficient, the rest re-optimised).
emit_profile_points("toy", toy_ml1, "beta_")
ci <- confint(gt_ml, parm = "beta_", method = "profile")
emit("grouseticks", "lmer_ML_profile", "ci_lower", rownames(ci), ci[, 1])
emit("grouseticks", "lmer_ML_profile", "ci_upper", rownames(ci), ci[, 2])
save_text("grouseticks_profile_ci_beta", capture.output(print(ci)))
ss_ml <- lme4::lmer(Reaction ~ Days + (1 | Subject), data = sleepstudy, REML = FALSE)
ci <- confint(ss_ml, parm = "beta_", method = "profile")
emit("sleepstudy", "lmer_ML_profile", "ci_lower", rownames(ci), ci[, 1])
emit("sleepstudy", "lmer_ML_profile", "ci_upper", rownames(ci), ci[, 2])
save_text("sleepstudy_profile_ci_beta", capture.output(print(ci)))
# ---- end of the fixed-effect profile block ------------------------------------------------------------

# ---- notebook 05, Exercise 3: the toy with alike individuals, a boundary (singular) ML fit -----
alike <- data.frame(IndF = factor(c(1, 1, 2, 2)), TreatF = factor(c(0, 1, 0, 1)), Resp = c(10, 25, 12, 20))
toy_alike <- suppressMessages(lme4::lmer(Resp ~ 0 + TreatF + (1 | IndF), data = alike, REML = FALSE))
record_lmer("toy_alike", "lmer_ML_cellmeans", toy_alike)


# =============================================================================================================
# ---- random slopes, one grouping factor (lmm_helpers.lmm, notebook 11) -------------------------------------
# Each model by ML and REML through lmerTest: every number lmm() reports, under model names "lmm_<label>_<ML|REML>".
# Factors are rebuilt from their values (levels in sorted order, as lmm() and a CSV reader see them): Orthodont's
# Sex is ordered Male, Female in nlme, which would make R's column SexFemale.
# varcorr terms are "grp|var1|var2" (NA as ""), ranef terms "level|column", theta terms lme4's names.
record_lmm <- function(dataset, model, fit) {
  s <- summary(fit)
  cf <- coef(s)
  for (q in c("Estimate", "Std. Error", "t value", "df", "Pr(>|t|)")) {
    key <- c(Estimate = "beta", `Std. Error` = "se", `t value` = "t", df = "df", `Pr(>|t|)` = "p")[[q]]
    emit(dataset, model, key, rownames(cf), cf[, q])
  }
  v <- as.matrix(vcov(fit))
  emit(dataset, model, "vcov", as.vector(outer(rownames(v), colnames(v), paste, sep = ":")), as.vector(v))
  emit(dataset, model, "sigma", "", sigma(fit))
  emit(dataset, model, "loglik", "", as.numeric(logLik(fit)))
  emit(dataset, model, "aic", "", AIC(fit))
  emit(dataset, model, "bic", "", BIC(fit))
  emit(dataset, model, "deviance", "", if (isREML(fit)) getME(fit, "devcomp")$cmp[["REML"]] else deviance(fit))
  emit(dataset, model, "singular", "", as.numeric(isSingular(fit)))
  emit(dataset, model, "converged", "", as.numeric(is.null(fit@optinfo$conv$lme4$messages)))
  emit(dataset, model, "nobs", "", nobs(fit))
  th <- getME(fit, "theta")
  emit(dataset, model, "theta", names(th), th)
  vc <- as.data.frame(VarCorr(fit))
  key <- paste(vc$grp, ifelse(is.na(vc$var1), "", vc$var1), ifelse(is.na(vc$var2), "", vc$var2), sep = "|")
  emit(dataset, model, "varcorr_vcov", key, vc$vcov)
  emit(dataset, model, "varcorr_sdcor", key, vc$sdcor)
  for (fac in names(ranef(fit))) {
    re <- ranef(fit)[[fac]]
    for (col in colnames(re)) emit(dataset, model, "ranef", paste(rownames(re), col, sep = "|"), re[[col]])
  }
}
fit_lmm_models <- function(dataset, label, formula, data, data_name) {
  for (reml in c(FALSE, TRUE)) {
    lab <- if (reml) "REML" else "ML"
    f <- suppressMessages(suppressWarnings(eval(call("lmer", formula, data = as.name(data_name), REML = reml))))
    record_lmm(dataset, paste0("lmm_", label, "_", lab), f)
    save_text(paste0(dataset, "_lmm_", label, "_", lab), capture.output(print(summary(f))))
  }
}

sleep <- sleepstudy[, c("Reaction", "Days", "Subject")]
sleep$Subject <- as.character(sleep$Subject)
fit_lmm_models("sleepstudy", "slopes", Reaction ~ Days + (Days | Subject), sleep, "sleep")
fit_lmm_models("sleepstudy", "uncorr", Reaction ~ Days + (Days || Subject), sleep, "sleep")

# nlme's Orthodont (Potthoff and Roy 1964): jaw growth of 27 children, 4 ages each; a factor and its interaction.
data("Orthodont", package = "nlme")
orthodont <- data.frame(distance = Orthodont$distance, age = Orthodont$age,
                        Subject = as.character(Orthodont$Subject), Sex = as.character(Orthodont$Sex))
write_data(orthodont, "orthodont")
fit_lmm_models("orthodont", "slopes", distance ~ age * Sex + (age | Subject), orthodont, "orthodont")

# R's ChickWeight (Crowder and Hand 1990): 50 chicks on 4 diets, weighed up to 12 times (unbalanced). lme4's ML fit
# ends with a convergence warning (recorded as converged = 0): lmm() must reach at least its log-likelihood.
chickweight <- data.frame(weight = ChickWeight$weight, Time = ChickWeight$Time,
                          Chick = as.character(ChickWeight$Chick), Diet = as.character(ChickWeight$Diet))
write_data(chickweight, "chickweight")
fit_lmm_models("chickweight", "slopes", weight ~ Time * Diet + (Time | Chick), chickweight, "chickweight")

# nlme's Oxboys (Goldstein 1987): heights of 26 boys at 9 occasions; large random intercepts (theta ~ 12).
data("Oxboys", package = "nlme")
# Occasion (1-9, the visit) is a crossed grouping factor of the slopes-with-several-factors block below.
oxboys <- data.frame(height = Oxboys$height, age = Oxboys$age, Subject = as.character(Oxboys$Subject),
                     Occasion = as.character(Oxboys$Occasion))
write_data(oxboys, "oxboys")
fit_lmm_models("oxboys", "slopes", height ~ age + (age | Subject), oxboys, "oxboys")
fit_lmm_models("oxboys", "uncorr", height ~ age + (1 | Subject) + (0 + age | Subject), oxboys, "oxboys")
# A boundary fit with slopes: the first days of ChickWeight (Time <= 4) put the intercept-slope correlation at +1.
chickweight_early <- subset(chickweight, Time <= 4)
fit_lmm_models("chickweight", "early", weight ~ Time + (Time | Chick), chickweight_early, "chickweight_early")

# R's model.matrix for fixed parts lmm() must name and code as R does: each column's name and its sum.
for (fm in c("distance ~ age * Sex", "distance ~ 0 + Sex + age:Sex", "distance ~ Sex - 1", "distance ~ age:Sex")) {
  mm <- model.matrix(as.formula(fm), orthodont)
  emit("orthodont", "model_matrix", "colsum", paste(fm, colnames(mm), sep = "|"), colSums(mm))
}
for (fm in c("weight ~ Diet * Time", "weight ~ Time:Diet", "weight ~ Diet + Time:Diet", "weight ~ 0 + Diet")) {
  mm <- model.matrix(as.formula(fm), chickweight)
  emit("chickweight", "model_matrix", "colsum", paste(fm, colnames(mm), sep = "|"), colSums(mm))
}
# ---- end of random slopes ------------------------------------------------------------------------------------
# =============================================================================================================

# =============================================================================================================
# ---- nested and crossed grouping factors (lme4's general algorithm, lmm_helpers.pls, notebook 12) -----------
# Same recording as the random-slopes block (record_lmm through fit_lmm_models): ML and REML, model names
# "lmm_<label>_<ML|REML>". Grouping and factor columns are written as characters, levels sorted as a CSV reader
# sees them; columns whose values look like numbers (InstEval's s, d, dept, service; cake's temperature) must be
# read back as strings (tests/test_crossed.py does). lme4 orders the random terms by decreasing number of levels,
# so theta, VarCorr and ranef come in that order.
# lme4's Penicillin: 6 samples of penicillin, each on 24 plates (crossed, complete).
penicillin <- data.frame(diameter = Penicillin$diameter, plate = as.character(Penicillin$plate),
                         sample = as.character(Penicillin$sample))
write_data(penicillin, "penicillin")
fit_lmm_models("penicillin", "crossed", diameter ~ 1 + (1 | plate) + (1 | sample), penicillin, "penicillin")

# lme4's Pastes: 10 batches, 3 casks within each (nested: cask "a" of batch A is not cask "a" of batch B).
pastes <- data.frame(strength = Pastes$strength, batch = as.character(Pastes$batch),
                     cask = as.character(Pastes$cask))
write_data(pastes, "pastes")
fit_lmm_models("pastes", "nested", strength ~ 1 + (1 | batch/cask), pastes, "pastes")

# nlme's Oats (Yates 1935): a split plot, 6 blocks, 3 varieties within each, 4 nitrogen levels (numeric).
data("Oats", package = "nlme")
oats <- data.frame(yield = Oats$yield, nitro = Oats$nitro, Block = as.character(Oats$Block),
                   Variety = as.character(Oats$Variety))
write_data(oats, "oats")
fit_lmm_models("oats", "nested", yield ~ nitro + (1 | Block/Variety), oats, "oats")
fit_lmm_models("oats", "crossed", yield ~ nitro + (1 | Block) + (1 | Variety), oats, "oats")

# lme4's cake (Cook 1938): breakage angle, 3 recipes x 6 temperatures, 15 replicates per recipe; the grouping factor
# is an interaction, recipe:replicate (45 levels). temperature is an ordered factor in lme4 (polynomial contrasts):
# rebuilt here as a plain factor, so R's columns are treatment contrasts like lmm()'s.
cake_df <- data.frame(angle = cake$angle, recipe = as.character(cake$recipe), replicate = cake$replicate,
                      temperature = as.character(cake$temperature))
write_data(cake_df, "cake")
fit_lmm_models("cake", "interaction", angle ~ recipe * temperature + (1 | recipe:replicate), cake_df, "cake_df")

# Sleepstudy with a correlated slope beside a crossed intercept: (Days | Subject) + (1 | Days) mixes a q = 2 block
# with a scalar term of another factor.
sleep_x <- sleep
sleep_x$DayF <- as.character(sleep$Days)
fit_lmm_models("sleepstudy", "slopes_crossed", Reaction ~ Days + (Days | Subject) + (1 | DayF), sleep_x, "sleep_x")

# lme4's InstEval: 73,421 lecture ratings; students s (2972) crossed with lecturers d (1128), dept:service (28).
# The speed benchmark of issue 11. Written with the columns the model uses.
insteval <- data.frame(y = InstEval$y, s = as.character(InstEval$s), d = as.character(InstEval$d),
                       dept = as.character(InstEval$dept), service = as.character(InstEval$service))
write_data(insteval, "insteval")
fit_lmm_models("insteval", "crossed", y ~ service + (1 | s) + (1 | d) + (1 | dept:service), insteval, "insteval")
# ---- end of nested and crossed ------------------------------------------------------------------------------
# =============================================================================================================

# =============================================================================================================
# ---- random slopes with several grouping factors: nested (x | a/b) and uncorrelated (x || a) + (1 | b) -------
# lmm() sends these to lme4's general algorithm (lmm_helpers.crossed); tests/test_crossed_slopes.py checks it
# against these numbers. Same recording as above (record_lmm, "lmm_<label>_<ML|REML>"); in lme4's order of terms.
# Datasets already written above, so no new data file: chickweight.csv and oxboys.csv.
#
# Nested, a slope at both levels: R's ChickWeight, weight ~ Time + (Time | Diet/Chick) = (Time | Diet) +
# (Time | Diet:Chick) (each chick is on one diet). Of the nested slope models tried on R's own data, this is the
# one lme4 fits without a boundary by ML and by REML, and without a convergence message. The others all put a
# correlation at +-1 (isSingular): nlme's Oats (nitro | Block/Variety), Pixel (day | Dog/Side), Wafer
# (voltage | Wafer/Site), Glucose2, Milk, PBG, Spruce, BodyWeight (ML); lme4's cake (temp | replicate/recipe).
# Diet has 4 levels, so its 2 x 2 covariance rests on 4 groups: identified, but flat (lme4 stops 5e-7
# log-likelihood units short of the optimum there; the tests say what that allows). Diet is the experiment's
# treatment, which an analysis would make fixed: the model is here as a check of the algorithm, not as advice.
# (mlmRev's egsingle, math ~ year + (year | schoolid/childid), children within schools, is the textbook nested
# slope model and not singular either, but would add mlmRev to the packages this script needs.)
fit_lmm_models("chickweight", "nested_slopes", weight ~ Time + (Time | Diet/Chick), chickweight, "chickweight")

# Uncorrelated slope beside a crossed intercept: nlme's Oxboys, height ~ age + (age || Subject) + (1 | Occasion):
# 26 boys, each measured at the same 9 occasions (Occasion crossed with Subject). Not singular: the occasion
# effect (SD 0.32 cm by ML) is the growth-curve bend a straight line in age leaves, shared by all boys.
stopifnot(identical(oxboys$Occasion, as.character(ave(seq_len(nrow(oxboys)), oxboys$Subject, FUN = seq_along))))
fit_lmm_models("oxboys", "uncorr_crossed", height ~ age + (age || Subject) + (1 | Occasion), oxboys, "oxboys")

# The same kind of model at a boundary: sleepstudy, Reaction ~ Days + (Days || Subject) + (1 | DayF) (DayF the day
# as a factor). lme4 flags both fits singular: the DayF SD is 0 by ML and 2.7e-4 (beside a residual SD of 25.6) by
# REML, a value set by bobyqa's stopping rule, not the data; the rest is identified and compared.
fit_lmm_models("sleepstudy", "uncorr_crossed", Reaction ~ Days + (Days || Subject) + (1 | DayF), sleep_x,
               "sleep_x")
# ---- end of random slopes with several grouping factors ------------------------------------------------------
# =============================================================================================================

# ---- write ----------------------------------------------------------------------------------
ref <- do.call(rbind, rows)
ref$value <- formatC(ref$value, digits = 17, format = "g")
write.csv(ref, file.path(out_dir, "r_reference.csv"), row.names = FALSE)
writeLines(c(R.version.string,
             paste("lme4", packageVersion("lme4")),
             paste("nlme", packageVersion("nlme")),
             paste("lmerTest", packageVersion("lmerTest"))),
           file.path(out_dir, "versions.txt"))
