# Activation functions defined to agree with torch.nn's defaults exactly (same formulas, same
# thresholds), so that a translated MLP computes what the torch module computes.

"torch.nn.Softplus(beta=1, threshold=20): linear above the threshold."
softplus_torch(x) = x > 20 ? x : log1p(exp(x))

"""
torch.nn.Sigmoid: `1 / (1 + exp(-x))`, and 0 where `exp(-x)` overflows (x < -709.78 in Float64),
as torch computes it. Differentiating the formula there would give `0 * Inf = NaN` (ForwardDiff in
the stiff methods' Jacobians, Zygote's broadcast in the adjoint's VJPs); torch's derivative
`s * (1 - s)` is 0, and so is that of the `zero(x)` branch.
"""
function sigmoid_torch(x)
    e = exp(-x)
    return isinf(e) ? zero(x) : inv(one(x) + e)
end

"torch.nn.SiLU (swish): x * sigmoid(x)."
silu_torch(x) = x * sigmoid_torch(x)

"torch.nn.ELU(alpha=1)."
elu_torch(x) = x > 0 ? x : expm1(x)

"torch.nn.ReLU."
relu_torch(x) = max(x, zero(x))

"""
    activation(name) -> Function

The scalar function for an activation name sent by the Python side ("identity" for none).
"""
function activation(name::AbstractString)
    name == "identity" && return identity
    name == "tanh" && return tanh
    name == "relu" && return relu_torch
    name == "softplus" && return softplus_torch
    name == "sigmoid" && return sigmoid_torch
    name == "silu" && return silu_torch
    name == "elu" && return elu_torch
    throw(ArgumentError("unknown activation \"$name\"; expected identity, tanh, relu, softplus, " *
                        "sigmoid, silu or elu"))
end

"The activation names in the order of their codes (`DenseLayer.act`)."
const ACTIVATION_NAMES = ("identity", "tanh", "relu", "softplus", "sigmoid", "silu", "elu")

"""
    activation_code(name) -> Int

The code of an activation name (its index in `ACTIVATION_NAMES`); errors like `activation`.
"""
function activation_code(name::AbstractString)
    activation(name)  # throws the error message for an unknown name
    return findfirst(==(name), ACTIVATION_NAMES)
end

"""
    apply_activation(code, z)

The activation with code `code` applied elementwise. A branch on runtime data, so every layer has
one concrete type and Zygote sees an ordinary broadcast in each branch.
"""
function apply_activation(code::Int, z)
    code == 1 && return z
    code == 2 && return tanh.(z)
    code == 3 && return relu_torch.(z)
    code == 4 && return softplus_torch.(z)
    code == 5 && return sigmoid_torch.(z)
    code == 6 && return silu_torch.(z)
    code == 7 && return elu_torch.(z)
    throw(ArgumentError("unknown activation code $code"))
end
